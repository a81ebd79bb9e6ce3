//! The world: prompts that name only content (shape, size, position) and users whose tacit taste
//! decides the style (palette, background, texture, pattern), never named in their prompts.
//! Palette, background and texture have words the base model learned in pretraining; the
//! pattern has none (it varied at random there), so only a learned taste can ask for it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::render::{render, Jitter};

/// Side of every image, in pixels.
pub const IMAGE_SIZE: usize = 32;

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Content {
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Index into [`POSITIONS`].
    pub position: usize,
    /// Index into [`SIZES`].
    pub size: usize,
}

/// Names of the shapes an image shows.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Names and the shape's centre x in pixels.
pub const POSITIONS: [(&str, f32); 3] = [("left", 9.5), ("center", 16.0), ("right", 22.5)];
/// Names and the shape's radius in pixels.
pub const SIZES: [(&str, f32); 2] = [("small", 5.5), ("large", 8.0)];

impl Content {
    /// Every content, in a fixed order (18).
    pub fn all() -> Vec<Content> {
        let mut out = Vec::new();
        for shape in 0..SHAPES.len() {
            for position in 0..POSITIONS.len() {
                for size in 0..SIZES.len() {
                    out.push(Content {
                        shape,
                        position,
                        size,
                    });
                }
            }
        }
        out
    }

    /// The prompt, which never names a style: "a small circle on the left".
    pub fn prompt(&self) -> String {
        format!(
            "a {} {} {}",
            SIZES[self.size].0,
            SHAPES[self.shape],
            position_phrase(self.position)
        )
    }

    /// The prompt with the words of the style's worded factors: "a small red dotted circle on
    /// the left with dark background". The pattern has no words.
    pub fn prompt_with_style(&self, style: &Style) -> String {
        format!(
            "a {} {} {} {} {} with {} background",
            SIZES[self.size].0,
            PALETTE[style.palette].0,
            TEXTURES[style.texture],
            SHAPES[self.shape],
            position_phrase(self.position),
            BACKGROUNDS[style.background].0
        )
    }
}

fn position_phrase(position: usize) -> String {
    match POSITIONS[position].0 {
        "center" => "in the center".into(),
        name => format!("on the {name}"),
    }
}

/// Foreground colours.
pub const PALETTE: [(&str, [u8; 3]); 4] = [
    ("red", [210, 50, 50]),
    ("green", [50, 170, 70]),
    ("blue", [50, 90, 220]),
    ("yellow", [225, 195, 40]),
];
/// Background colours.
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("dark", [30, 30, 40]),
    ("light", [235, 235, 225]),
    ("gray", [125, 125, 130]),
];
/// The object's texture: solid, or dotted with a 2×2 hole in the middle of every 4×4 patch
/// (patch scale: what one token of the codec holds).
pub const TEXTURES: [&str; 2] = ["solid", "dotted"];
/// The background's pattern, the tacit factor (no words in the vocabulary): plain, or speckled
/// with a 2×2 dot of a nearby shade in the middle of every 4×4 patch. These names are for
/// reports only.
pub const PATTERNS: [&str; 2] = ["plain", "speckled"];

/// Number of taste factors.
pub const FACTORS: usize = 4;
/// Factor sizes: palette, background, texture, pattern.
pub const FACTOR_SIZES: [usize; FACTORS] = [
    PALETTE.len(),
    BACKGROUNDS.len(),
    TEXTURES.len(),
    PATTERNS.len(),
];
/// The taste factors, in the order of [`Style`] and [`Taste`].
pub const FACTOR_NAMES: [&str; FACTORS] = ["palette", "background", "texture", "pattern"];
/// Whether each factor has words the base understands (the pattern is tacit).
pub const WORDED: [bool; FACTORS] = [true, true, true, false];

/// How an image looks, apart from what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Style {
    /// Index into [`PALETTE`].
    pub palette: usize,
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
    /// Index into [`TEXTURES`].
    pub texture: usize,
    /// Index into [`PATTERNS`].
    pub pattern: usize,
}

impl Style {
    /// The value of factor `f` (0 palette, 1 background, 2 texture, 3 pattern).
    pub fn factor(&self, f: usize) -> usize {
        [self.palette, self.background, self.texture, self.pattern][f]
    }

    fn from_factors(v: [usize; FACTORS]) -> Self {
        Style {
            palette: v[0],
            background: v[1],
            texture: v[2],
            pattern: v[3],
        }
    }

    /// The style's values in words, worded factors first: "red, dark, dotted, speckled".
    pub fn describe(&self) -> String {
        [
            PALETTE[self.palette].0,
            BACKGROUNDS[self.background].0,
            TEXTURES[self.texture],
            PATTERNS[self.pattern],
        ]
        .join(", ")
    }

    /// A uniformly random style.
    pub fn random(rng: &mut impl Rng) -> Self {
        Style::from_factors(FACTOR_SIZES.map(|n| rng.random_range(0..n)))
    }
}

/// A user's taste: for each factor a probability over its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taste {
    /// Per factor (see [`FACTOR_NAMES`]), a probability per value.
    pub factors: [Vec<f32>; FACTORS],
}

impl Taste {
    /// The taste that likes exactly `style`.
    pub fn of(style: &Style) -> Self {
        Taste {
            factors: std::array::from_fn(|f| {
                let mut probs = vec![0.0; FACTOR_SIZES[f]];
                probs[style.factor(f)] = 1.0;
                probs
            }),
        }
    }

    /// A style drawn from the taste.
    pub fn sample(&self, rng: &mut impl Rng) -> Style {
        Style::from_factors(std::array::from_fn(|f| {
            let u: f32 = rng.random();
            let probs = &self.factors[f];
            let mut acc = 0.0;
            for (v, p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    return v;
                }
            }
            probs.len() - 1
        }))
    }

    /// The most likely style (what the "taste in the prompt" baseline writes into the prompt).
    pub fn mode(&self) -> Style {
        Style::from_factors(std::array::from_fn(|f| {
            let probs = &self.factors[f];
            (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap_or(0)
        }))
    }

    /// Whether some factor has more than one liked value.
    pub fn is_mixed(&self) -> bool {
        self.factors
            .iter()
            .any(|p| p.iter().filter(|&&x| x > 0.0).count() > 1)
    }
}

/// A user of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id in the exported dataset (`user000`, …).
    pub id: String,
    /// What the user likes.
    pub taste: Taste,
}

/// How a world is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Draws the users, tastes and images.
    pub seed: u64,
    /// Users the adapters and table are trained on.
    pub train_users: usize,
    /// Users kept out of stage 1, for cold start.
    pub new_users: usize,
    /// Liked images per user (random contents).
    pub images_per_user: usize,
    /// Chance that a user likes two values of one factor, half and half.
    pub mixed_fraction: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train_users: 32,
            new_users: 12,
            images_per_user: 24,
            mixed_fraction: 0.25,
        }
    }
}

/// One liked image: what it shows, how it looks and its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldImage {
    /// What the image shows.
    pub content: Content,
    /// How it looks.
    pub style: Style,
    /// `IMAGE_SIZE²` RGB pixels, row-major.
    pub rgb: image::RgbImage,
}

/// A drawn world: its users (trained first, then new) and their images.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// How it was drawn.
    pub config: WorldConfig,
    /// Trained users first, then the new ones.
    pub users: Vec<User>,
}

/// Derives independent RNG streams from one seed.
pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> StdRng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .wrapping_add(index.wrapping_mul(0x1656_67B1_9E37_79F9));
    StdRng::seed_from_u64(mix)
}

impl World {
    /// Draws the users' tastes from the config's seed.
    pub fn new(config: WorldConfig) -> Self {
        let total = config.train_users + config.new_users;
        let users = (0..total)
            .map(|i| {
                let mut rng = rng_for(config.seed, 1, i as u64);
                let mut factors: [Vec<f32>; FACTORS] = FACTOR_SIZES.map(|n| vec![0.0; n]);
                for (f, probs) in factors.iter_mut().enumerate() {
                    probs[rng.random_range(0..FACTOR_SIZES[f])] = 1.0;
                }
                if rng.random_bool(config.mixed_fraction) {
                    let f = rng.random_range(0..FACTORS);
                    let liked = factors[f].iter().position(|&p| p > 0.0).unwrap_or(0);
                    let other = (liked + rng.random_range(1..FACTOR_SIZES[f])) % FACTOR_SIZES[f];
                    factors[f][liked] = 0.5;
                    factors[f][other] = 0.5;
                }
                let kind = if i < config.train_users {
                    "user"
                } else {
                    "new"
                };
                User {
                    id: format!("{kind}{i:03}"),
                    taste: Taste { factors },
                }
            })
            .collect();
        Self { config, users }
    }

    /// The users stage 1 trains on.
    pub fn train_users(&self) -> &[User] {
        &self.users[..self.config.train_users]
    }

    /// The users kept for cold start.
    pub fn new_users(&self) -> &[User] {
        &self.users[self.config.train_users..]
    }

    /// Image `index` that user `user` (index into [`World::users`]) likes: its contents cycle
    /// through a per-user shuffle of all contents; the style is drawn from the taste.
    pub fn liked_image(&self, user: usize, index: usize) -> WorldImage {
        let contents = Content::all();
        let mut order: Vec<usize> = (0..contents.len()).collect();
        let mut shuffle = rng_for(self.config.seed, 2, user as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, shuffle.random_range(0..=i));
        }
        let content = contents[order[index % order.len()]];
        let mut rng = rng_for(self.config.seed, 3, (user * 100_003 + index) as u64);
        let style = self.users[user].taste.sample(&mut rng);
        WorldImage {
            content,
            style,
            rgb: render(content, style, &Jitter::draw(&mut rng)),
        }
    }

    /// The user's liked images `0..images_per_user`.
    pub fn liked_images(&self, user: usize) -> Vec<WorldImage> {
        (0..self.config.images_per_user)
            .map(|i| self.liked_image(user, i))
            .collect()
    }

    /// A held-out image of `content` in the user's taste (the reference for the distance score);
    /// drawn from a stream the liked images never use.
    pub fn held_out_image(&self, user: usize, content: Content, index: usize) -> WorldImage {
        let key = (user * 1000 + content.shape * 100 + content.position * 10 + content.size) as u64;
        let mut rng = rng_for(self.config.seed, 4, key * 1000 + index as u64);
        let style = self.users[user].taste.sample(&mut rng);
        WorldImage {
            content,
            style,
            rgb: render(content, style, &Jitter::draw(&mut rng)),
        }
    }

    /// A base-model training image: any content, a uniformly random style; its caption names the
    /// style half the time, so the base model learns both what the words mean and to pick a
    /// style of its own when they are absent.
    pub fn pretraining_sample(seed: u64, index: u64) -> (WorldImage, String) {
        let mut rng = rng_for(seed, 5, index);
        let contents = Content::all();
        let content = contents[rng.random_range(0..contents.len())];
        let style = Style::random(&mut rng);
        let caption = if rng.random_bool(0.5) {
            content.prompt_with_style(&style)
        } else {
            content.prompt()
        };
        (
            WorldImage {
                content,
                style,
                rgb: render(content, style, &Jitter::draw(&mut rng)),
            },
            caption,
        )
    }
}
