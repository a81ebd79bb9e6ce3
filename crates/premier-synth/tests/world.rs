//! The world is reproducible from its seed, and its export parses with premier-train's readers.

use premier_synth::export::export_dataset;
use premier_synth::world::{World, WorldConfig};
use premier_train::data::{Dataset, ReadOptions};

#[test]
fn same_seed_same_world_other_seed_other_world() {
    let a = World::new(WorldConfig::default());
    let b = World::new(WorldConfig::default());
    assert_eq!(a, b);
    assert_eq!(a.liked_image(3, 5), b.liked_image(3, 5));
    let c = World::new(WorldConfig {
        seed: 1,
        ..WorldConfig::default()
    });
    assert_ne!(a.users, c.users);
    assert_ne!(a.liked_image(3, 5).rgb, c.liked_image(3, 5).rgb);
}

#[test]
fn most_tastes_are_single_valued_and_some_mixed() {
    let world = World::new(WorldConfig {
        train_users: 200,
        ..WorldConfig::default()
    });
    let mixed = world.users.iter().filter(|u| u.taste.is_mixed()).count();
    let share = mixed as f64 / world.users.len() as f64;
    assert!((0.15..0.35).contains(&share), "mixed share {share}");
    for user in &world.users {
        for probs in &user.taste.factors {
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}

#[test]
fn liked_images_follow_the_taste_and_cover_the_contents() {
    let world = World::new(WorldConfig::default());
    for (u, user) in world.users.iter().enumerate() {
        let images = world.liked_images(u);
        for image in &images {
            for f in 0..premier_synth::world::FACTORS {
                assert!(user.taste.factors[f][image.style.factor(f)] > 0.0);
            }
        }
        let mut contents: Vec<_> = images.iter().map(|i| i.content).collect();
        contents.sort_by_key(|c| (c.shape, c.position, c.size));
        contents.dedup();
        assert_eq!(
            contents.len(),
            18,
            "24 images cycle through all 18 contents"
        );
    }
}

#[test]
fn exported_dataset_parses_with_the_training_readers() {
    let world = World::new(WorldConfig {
        train_users: 3,
        new_users: 1,
        images_per_user: 5,
        ..WorldConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let exported = export_dataset(&world, dir.path()).unwrap();
    assert_eq!(exported.images, 20);
    let options = ReadOptions {
        check_images: true,
        ..ReadOptions::default()
    };
    let folder = Dataset::from_folder(&exported.folder, &options).unwrap();
    let manifest = Dataset::from_jsonl(&exported.manifest, &options).unwrap();
    for data in [&folder, &manifest] {
        assert_eq!(data.users.len(), 4);
        assert!(data.users.iter().all(|u| u.samples.len() == 5));
        assert!(data.skipped.is_empty());
    }
    let first = &manifest.users[0];
    assert_eq!(first.id, world.users[0].id);
    assert_eq!(
        first.samples[0].caption,
        world.liked_image(0, 0).content.prompt()
    );
    let back = image::open(&first.samples[0].image).unwrap().to_rgb8();
    assert_eq!(back, world.liked_image(0, 0).rgb);
}
