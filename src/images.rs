//! What [`crate::Premier::generate`] is asked for ([`ImageRequest`]) and what it returns
//! ([`Images`]: every prompt for every user and seed, with PNG and grid helpers).

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::PremierError;
use crate::personalized::User;
use crate::pipeline::image_io::{grid, save_png};
use crate::pipeline::{GenerateRequest, Timings, UserChoice};

/// Every prompt for every user and seed, at one size, step count, guidance and α.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    /// A column of images each (with every seed).
    pub prompts: Vec<String>,
    /// A row of images each; default `[User::Base]`.
    pub users: Vec<User>,
    /// Each prompt is drawn once per seed (the same noise for every user); default `[0]`.
    pub seeds: Vec<u64>,
    /// Pixels; positive multiples of 16.
    pub width: usize,
    /// Pixels; positive multiples of 16.
    pub height: usize,
    /// Euler steps (FLUX.1-dev: 28, schnell: 4).
    pub steps: usize,
    /// Distilled guidance scale (dev: 3.5 in diffusers, 2.5 in Premier's evaluation).
    pub guidance: f32,
    /// Preference strength: Δ × α (0 = plain FLUX, 1 = as trained, negative: away from the
    /// taste).
    pub alpha: f64,
}

impl ImageRequest {
    /// `prompts` for the base model, seed 0, 512 × 512, 28 steps (FLUX.1-dev's), guidance 3.5,
    /// α = 1. [`crate::Premier::request`] sets the loaded variant's steps.
    pub fn new<S: Into<String>>(prompts: impl IntoIterator<Item = S>) -> Self {
        Self {
            prompts: prompts.into_iter().map(Into::into).collect(),
            users: vec![User::Base],
            seeds: vec![0],
            width: 512,
            height: 512,
            steps: 28,
            guidance: 3.5,
            alpha: 1.0,
        }
    }

    /// The rows: whose taste each follows.
    pub fn users(mut self, users: impl IntoIterator<Item = User>) -> Self {
        self.users = users.into_iter().collect();
        self
    }

    /// The seeds every prompt is drawn with.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = u64>) -> Self {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// Width and height in pixels.
    pub fn size(mut self, width: usize, height: usize) -> Self {
        (self.width, self.height) = (width, height);
        self
    }

    /// Euler steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Distilled guidance scale.
    pub fn guidance(mut self, guidance: f32) -> Self {
        self.guidance = guidance;
        self
    }

    /// Preference strength α.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The pipeline's batch for one user: prompt-major, then seed.
    pub(crate) fn batch_of(&self, user: UserChoice, shift: bool) -> GenerateRequest {
        let n = self.prompts.len() * self.seeds.len();
        GenerateRequest {
            prompts: self
                .prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.clone(), self.seeds.len()))
                .collect(),
            users: vec![user; n],
            seeds: self
                .prompts
                .iter()
                .flat_map(|_| self.seeds.iter().copied())
                .collect(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance: self.guidance,
            shift,
            alpha: self.alpha,
        }
    }
}

/// The images of an [`ImageRequest`]: one per (user, prompt, seed).
#[derive(Debug, Clone)]
pub struct Images {
    users: usize,
    prompts: usize,
    seeds: usize,
    /// User-major, then prompt, then seed.
    images: Vec<RgbImage>,
    /// Where the time went, one entry per user.
    pub timings: Vec<Timings>,
}

impl Images {
    pub(crate) fn new(
        request: &ImageRequest,
        images: Vec<RgbImage>,
        timings: Vec<Timings>,
    ) -> Self {
        let (users, prompts, seeds) = (
            request.users.len(),
            request.prompts.len(),
            request.seeds.len(),
        );
        debug_assert_eq!(images.len(), users * prompts * seeds);
        Self {
            users,
            prompts,
            seeds,
            images,
            timings,
        }
    }

    /// The image of `users[user]`, `prompts[prompt]`, `seeds[seed]` of the request.
    pub fn get(&self, user: usize, prompt: usize, seed: usize) -> Option<&RgbImage> {
        (user < self.users && prompt < self.prompts && seed < self.seeds)
            .then(|| &self.images[(user * self.prompts + prompt) * self.seeds + seed])
    }

    /// Every image with its (user, prompt, seed) indices.
    pub fn iter(&self) -> impl Iterator<Item = ((usize, usize, usize), &RgbImage)> {
        let (p, s) = (self.prompts, self.seeds);
        self.images
            .iter()
            .enumerate()
            .map(move |(i, image)| ((i / (p * s), (i / s) % p, i % s), image))
    }

    /// How many images (users × prompts × seeds).
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// One row per user, one column per (prompt, seed), with a 4-pixel white border.
    pub fn grid(&self) -> RgbImage {
        let row = self.prompts * self.seeds;
        let rows: Vec<Vec<RgbImage>> = self.images.chunks(row.max(1)).map(|r| r.to_vec()).collect();
        grid(&rows, 4)
    }

    /// Writes `user{u}_prompt{p}_seed{s}.png` for every image and `grid.png` into `dir`
    /// (created if needed), each atomically; returns the paths written, the grid last.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, PremierError> {
        std::fs::create_dir_all(dir).map_err(|e| PremierError::Write {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut written = Vec::new();
        for ((u, p, s), image) in self.iter() {
            let path = dir.join(format!("user{u}_prompt{p}_seed{s}.png"));
            save_png(image, &path)?;
            written.push(path);
        }
        let path = dir.join("grid.png");
        save_png(&self.grid(), &path)?;
        written.push(path);
        Ok(written)
    }
}
