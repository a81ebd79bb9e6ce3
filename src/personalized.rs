//! [`Premier`]: FLUX.1 with Premier's adapters and users, built from files in one checked step
//! and asked for images by prompt, user and seed.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::FloatDType;
use image::RgbImage;

use crate::adapter::{AdapterConfig, PreferenceAdapter};
use crate::encoders::{FluxEncoders, Preprocess};
use crate::error::{PremierError, SizeAt};
use crate::images::{ImageRequest, Images};
use crate::io::SafetensorsFile;
use crate::mmdit::{FluxAutodiffBackend, FluxOps};
use crate::model_files::{ModelFiles, ModelPaths, Variant};
use crate::pipeline::image_io::tensor_to_rgb;
use crate::pipeline::{GenerateRequest, Generated, Generator, StepObserver, UserChoice};
use crate::train::encode::Encoders;
use crate::train::metrics::MetricRecord;
use crate::train::new_user::{fit_new_user, fresh_new_user};
use crate::train::run::{ColdStartConfig, RunError};
use crate::train::run::{TrainedModel, TRAINED_MODEL_FILE};
use crate::train::samples::EncodedUsers;
use crate::train::stage2::{NewUser, Stage2Trainer};
use crate::users::{UserRef, UserShape, UserTable};
use crate::vae::Tiling;

/// The users of the released table (`user_embedding.safetensors` of the Premier release).
pub const RELEASED_USERS: usize = 1000;
/// Tokens per user of the released table.
pub const RELEASED_USER_TOKENS: usize = 30;

/// Whose taste an image follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum User {
    /// Plain FLUX.1 (Δ = 0).
    Base,
    /// A trained user by row of the user table.
    Row(usize),
    /// A trained user by id, looked up in the `premier.json` beside the adapter (a
    /// `premier train` run's folder).
    Id(String),
    /// A user file: `user_embedding_<id>.safetensors` (its own tokens) or
    /// `user_combination_<id>.safetensors` (coefficients over the table), as the cold start
    /// writes them.
    File(PathBuf),
}

impl User {
    /// A user as a person writes one (a `--user` flag): `base`, a row number, a path to a user
    /// file (it holds a path separator or ends in `.safetensors`), else a trained user's id.
    pub fn parse(spec: &str) -> Self {
        if spec == "base" {
            User::Base
        } else if let Ok(row) = spec.parse::<usize>() {
            User::Row(row)
        } else if spec.contains(std::path::MAIN_SEPARATOR) || spec.ends_with(".safetensors") {
            User::File(PathBuf::from(spec))
        } else {
            User::Id(spec.to_string())
        }
    }
}

/// Builds a [`Premier`]: the model files (a diffusers folder, single files, or both: single
/// files override the folder's parts), optionally Premier's adapter and user table, the device
/// and float types. [`Self::build`] checks every size against every other before it loads.
pub struct PremierBuilder<B: FluxOps> {
    paths: ModelPaths,
    adapter: Option<PathBuf>,
    user_table: Option<PathBuf>,
    num_users: Option<usize>,
    variant: Variant,
    device: B::Device,
    dtype: Option<FloatDType>,
    adapter_dtype: Option<FloatDType>,
    vae_tiling: Option<Tiling>,
    cache_budgets: Option<(usize, usize)>,
}

impl<B: FluxOps> Default for PremierBuilder<B> {
    fn default() -> Self {
        Self {
            paths: ModelPaths::default(),
            adapter: None,
            user_table: None,
            num_users: None,
            variant: Variant::Dev,
            device: Default::default(),
            dtype: None,
            adapter_dtype: None,
            vae_tiling: None,
            cache_budgets: None,
        }
    }
}

impl<B: FluxOps> PremierBuilder<B> {
    /// A diffusers FLUX.1 pipeline folder (`transformer/`, `vae/`, `text_encoder/`,
    /// `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`).
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.paths.model_dir = Some(dir.into());
        self
    }

    /// The transformer: BFL `flux1-dev.safetensors` or a diffusers `transformer/` folder.
    pub fn flux(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.flux = Some(path.into());
        self
    }

    /// The autoencoder: BFL `ae.safetensors` or a diffusers `vae/` folder.
    pub fn ae(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.ae = Some(path.into());
        self
    }

    /// T5-v1.1-XXL (a file or a folder of shards).
    pub fn t5(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.t5 = Some(path.into());
        self
    }

    /// CLIP-L's text encoder (a file or a folder).
    pub fn clip(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.clip = Some(path.into());
        self
    }

    /// T5's `tokenizer.json` (default: the folder's, else the one shipped with premier-text).
    pub fn t5_tokenizer(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.t5_tokenizer = Some(path.into());
        self
    }

    /// CLIP's `tokenizer.json` (default: the folder's, else the one shipped with premier-text).
    pub fn clip_tokenizer(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.clip_tokenizer = Some(path.into());
        self
    }

    /// Premier's adapters (`mod_adapter.safetensors`). With a `premier.json` beside it (a
    /// `premier train` run) its sizes and user ids come from there; otherwise the released sizes.
    pub fn adapter(mut self, path: impl Into<PathBuf>) -> Self {
        self.adapter = Some(path.into());
        self
    }

    /// The trained users (`user_embedding.safetensors`).
    pub fn user_table(mut self, path: impl Into<PathBuf>) -> Self {
        self.user_table = Some(path.into());
        self
    }

    /// Users in the table when no `premier.json` says (default: the release's 1000).
    pub fn num_users(mut self, users: usize) -> Self {
        self.num_users = Some(users);
        self
    }

    /// FLUX.1-dev (default) or -schnell: the default config, steps, schedule and T5 length.
    pub fn variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// Where the models are loaded and run (default: the backend's default device).
    pub fn device(mut self, device: B::Device) -> Self {
        self.device = device;
        self
    }

    /// Float type of the transformer's weights (each tensor cast as it is read); default: the
    /// backend's.
    pub fn dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Float type of the adapters' weights (default: as loaded); bf16 halves their memory.
    pub fn adapter_dtype(mut self, dtype: FloatDType) -> Self {
        self.adapter_dtype = Some(dtype);
        self
    }

    /// Decode in tiles (less memory for large images; approximate near the seams).
    pub fn vae_tiling(mut self, tiling: Tiling) -> Self {
        self.vae_tiling = Some(tiling);
        self
    }

    /// Bytes the prompt-feature and Δ caches may hold (least recently used evicted first;
    /// defaults: 256 MiB and 1 GiB, 32 prompts and 8 (prompt, user) pairs at FLUX.1-dev's sizes).
    pub fn cache_budgets(mut self, text_bytes: usize, delta_bytes: usize) -> Self {
        self.cache_budgets = Some((text_bytes, delta_bytes));
        self
    }

    /// Every part of a model at once (what [`Self::files`] resolves).
    pub fn model_files(mut self, files: ModelFiles) -> Self {
        self.paths = ModelPaths {
            model_dir: None,
            flux: Some(files.flux),
            ae: Some(files.ae),
            t5: Some(files.t5),
            clip: Some(files.clip),
            t5_tokenizer: files.t5_tokenizer,
            clip_tokenizer: files.clip_tokenizer,
        };
        self
    }

    /// The model files: each part given alone, else the model folder's.
    pub fn files(&self) -> Result<ModelFiles, PremierError> {
        self.paths
            .resolve()
            .map_err(|part| PremierError::MissingPart {
                part: match part {
                    "flux" => "FLUX transformer",
                    "ae" => "autoencoder",
                    "t5" => "T5 encoder",
                    _ => "CLIP text encoder",
                },
                hint: "`model_dir`, or the part alone (`flux`, `ae`, `t5`, `clip`)",
            })
    }

    /// Checks the sizes of every file against every other (prompt widths, latent channels,
    /// adapter against backbone and table, table against `premier.json`), then loads.
    pub fn build(self) -> Result<Premier<B>, PremierError> {
        let files = self.files()?;
        let configs = files.configs(self.variant)?;
        let personal = match (&self.adapter, &self.user_table) {
            (Some(adapter), Some(table)) => Some(Personalization::check(
                adapter,
                table,
                self.num_users,
                &files,
                &configs,
            )?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(PremierError::MissingPart {
                    part: "user table beside the adapter",
                    hint: "`user_table` (a run's user_embedding.safetensors)",
                })
            }
            (None, Some(_)) => {
                return Err(PremierError::MissingPart {
                    part: "adapter beside the user table",
                    hint: "`adapter` (a run's mod_adapter.safetensors)",
                })
            }
        };
        let device = self.device;
        // Frozen: on an autodiff backend nothing here records a graph (a new user's
        // training tracks only the new user).
        let flux = files
            .load_flux::<B>(&configs.flux, &device, self.dtype)?
            .no_grad();
        let vae = files.load_vae::<B>(&configs.vae, &device)?.no_grad();
        let mut text = files.load_text::<B>(&configs, self.variant, &device)?;
        text.t5 = text.t5.no_grad();
        text.clip = text.clip.no_grad();
        let (adapter, table, trained) = match personal {
            Some(p) => {
                let (adapter, table) = p.load::<B>(self.adapter_dtype, &device)?;
                (Some(adapter.no_grad()), Some(table.no_grad()), p.trained)
            }
            None => (None, None, None),
        };
        let mut generator = Generator::new(flux, vae, configs.vae, text, adapter, table, device);
        generator.vae_tiling = self.vae_tiling;
        if let Some((text, delta)) = self.cache_budgets {
            generator.set_cache_budgets(text, delta);
        }
        Ok(Premier {
            generator,
            variant: self.variant,
            trained,
        })
    }
}

/// An adapter and a user table whose sizes were checked against the backbone, T5 and each
/// other ([`Self::check`]), ready to load.
pub struct Personalization {
    /// `mod_adapter.safetensors`.
    pub adapter_file: PathBuf,
    /// `user_embedding.safetensors`.
    pub table_file: PathBuf,
    /// The adapter's sizes.
    pub adapter: AdapterConfig,
    /// The table's sizes.
    pub users: UserShape,
    /// The `premier.json` beside the adapter (a `premier train` run), if there is one.
    pub trained: Option<TrainedModel>,
}

impl Personalization {
    /// Reads the sizes (from the `premier.json` beside the adapter, else the release's, with
    /// `num_users` users if given) and checks them against `files` and the table's header.
    pub fn check(
        adapter_file: &Path,
        table_file: &Path,
        num_users: Option<usize>,
        files: &ModelFiles,
        configs: &crate::model_files::ModelConfigs,
    ) -> Result<Self, PremierError> {
        let flux = (configs.flux.hidden_size, configs.flux.depth);
        let run_dir = adapter_file
            .parent()
            .filter(|d| d.join(TRAINED_MODEL_FILE).is_file());
        let trained = run_dir.map(TrainedModel::read).transpose()?;
        let (adapter, mut users) =
            personalization_sizes(trained.as_ref(), configs.t5.d_model, flux);
        if let Some(n) = num_users {
            users.users = n;
        }
        let at = SizeAt::new;
        if let (Some(dir), Some(_)) = (run_dir, &trained) {
            let json = dir.join(TRAINED_MODEL_FILE);
            at(&json, "adapter.text_dim", adapter.text_dim).must_equal(
                at(&files.t5, "d_model", configs.t5.d_model),
                "prompt token width",
            )?;
            at(&json, "adapter.hidden", adapter.hidden).must_equal(
                at(&files.flux, "hidden_size", configs.flux.hidden_size),
                "model width",
            )?;
            at(&json, "adapter.blocks", adapter.blocks).must_equal(
                at(&files.flux, "depth", configs.flux.depth),
                "double blocks",
            )?;
        }
        // The table's rows are users × (tokens · user width): its width must split into the
        // adapter's user width, and its rows must be the users `premier.json` lists.
        let table = SafetensorsFile::open(table_file)?;
        if let Some(&[rows, width]) = table.shape("weight") {
            let adapter_source = run_dir
                .map(|d| d.join(TRAINED_MODEL_FILE))
                .unwrap_or_else(|| adapter_file.to_path_buf());
            at(
                &adapter_source,
                "user tokens × user_dim",
                users.tokens * adapter.user_dim,
            )
            .must_equal(at(table_file, "weight's columns", width), "user widths")?;
            if let (Some(dir), Some(t)) = (run_dir, &trained) {
                if rows != t.ids.len() && rows != t.ids.len() + 1 {
                    return Err(PremierError::SizeMismatch {
                        what: "users".into(),
                        first: Box::new(at(&dir.join(TRAINED_MODEL_FILE), "ids", t.ids.len())),
                        second: Box::new(at(table_file, "weight's rows", rows)),
                    });
                }
            }
        }
        Ok(Self {
            adapter_file: adapter_file.to_path_buf(),
            table_file: table_file.to_path_buf(),
            adapter,
            users,
            trained,
        })
    }
}

impl Personalization {
    /// The adapter (its weights cast to `adapter_dtype` if given) and the table.
    pub fn load<B: FluxOps>(
        &self,
        adapter_dtype: Option<FloatDType>,
        device: &B::Device,
    ) -> Result<(PreferenceAdapter<B>, UserTable<B>), PremierError> {
        let adapter = PreferenceAdapter::<B>::load(&self.adapter_file, &self.adapter, device)?;
        let adapter = match adapter_dtype {
            Some(dtype) => adapter.with_weight_dtype(dtype),
            None => adapter,
        };
        let table = UserTable::<B>::load(&self.table_file, self.users, device)?;
        Ok((adapter, table))
    }
}

/// The adapter's and the table's sizes: those of `trained` (a `premier train` run), else the
/// released ones for a backbone of `flux` = (width, double blocks) and T5 width `text_dim`.
pub fn personalization_sizes(
    trained: Option<&TrainedModel>,
    text_dim: usize,
    flux: (usize, usize),
) -> (AdapterConfig, UserShape) {
    match trained {
        Some(trained) => (trained.adapter.clone(), trained.users),
        None => {
            let adapter = AdapterConfig {
                text_dim,
                hidden: flux.0,
                blocks: flux.1,
                ..AdapterConfig::released()
            };
            let users = UserShape {
                users: RELEASED_USERS,
                tokens: RELEASED_USER_TOKENS,
                dim: adapter.user_dim,
            };
            (adapter, users)
        }
    }
}

/// `user` as the pipeline names it: ids looked up in `trained`, files read for their kind.
pub fn resolve_user(
    user: &User,
    trained: Option<&TrainedModel>,
) -> Result<UserChoice, PremierError> {
    let unknown = |reason: String| PremierError::UnknownUser {
        user: match user {
            User::File(p) => p.display().to_string(),
            User::Id(id) => id.clone(),
            other => format!("{other:?}"),
        },
        reason,
    };
    Ok(match user {
        User::Base => UserChoice::Base,
        User::Row(row) => UserChoice::User(UserRef::Index(*row)),
        User::Id(id) => match trained {
            Some(t) => match t.row(id) {
                Some(row) => UserChoice::User(UserRef::Index(row)),
                None => {
                    let shown: Vec<&str> = t.ids.iter().take(5).map(String::as_str).collect();
                    let more = if t.ids.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    };
                    return Err(unknown(format!(
                        "not a user id of the run (its {} users: {}{more})",
                        t.ids.len(),
                        shown.join(", ")
                    )));
                }
            },
            None => {
                return Err(unknown(format!(
                    "user ids are looked up in the {TRAINED_MODEL_FILE} beside the adapter, and \
                     there is none (give a row number or a user file)"
                )))
            }
        },
        User::File(path) => {
            let file = SafetensorsFile::open(path)?;
            UserChoice::User(if file.shape("combination_weights").is_some() {
                UserRef::CombinationFile(path.clone())
            } else {
                UserRef::EmbeddingFile(path.clone())
            })
        }
    })
}

/// FLUX.1 with Premier's adapters and trained users, loaded and checked by
/// [`Premier::builder`]. The adapter and the table cannot change under it, so the prompt
/// features and Δ it keeps between calls cannot go stale.
pub struct Premier<B: FluxOps> {
    generator: Generator<B>,
    variant: Variant,
    trained: Option<TrainedModel>,
}

impl<B: FluxOps> Premier<B> {
    /// A builder with nothing given: FLUX.1-dev, the backend's default device.
    pub fn builder() -> PremierBuilder<B> {
        PremierBuilder::default()
    }

    /// The variant's defaults for `prompts`: one image per prompt for the base model, seed 0,
    /// 512 × 512, the variant's steps, guidance 3.5, α = 1.
    pub fn request<S: Into<String>>(&self, prompts: impl IntoIterator<Item = S>) -> ImageRequest {
        ImageRequest::new(prompts).steps(self.variant.steps())
    }

    /// Bytes the caches hold now: (prompt features, Δ).
    pub fn cached_bytes(&self) -> (usize, usize) {
        self.generator.cached_bytes()
    }

    /// Whether an adapter and a user table are loaded (users other than [`User::Base`] work).
    pub fn is_personalized(&self) -> bool {
        self.generator.adapter().is_some() && self.generator.users().is_some()
    }

    /// The trained users' ids, in table order, when the adapter came with a `premier.json`.
    pub fn user_ids(&self) -> Option<&[String]> {
        self.trained.as_ref().map(|t| t.ids.as_slice())
    }

    /// `user` as the pipeline names it (ids looked up, files read for their kind).
    pub fn resolve_user(&self, user: &User) -> Result<UserChoice, PremierError> {
        resolve_user(user, self.trained.as_ref())
    }

    /// Every prompt of `request` for every user and seed; see [`Images`] for the order.
    pub fn generate(&mut self, request: &ImageRequest) -> Result<Images, PremierError> {
        self.generate_with(request, &mut ())
    }

    /// [`Self::generate`], telling `observer` after each sampling step of each user's batch.
    pub fn generate_with(
        &mut self,
        request: &ImageRequest,
        observer: &mut impl StepObserver,
    ) -> Result<Images, PremierError> {
        let users: Vec<UserChoice> = request
            .users
            .iter()
            .map(|u| self.resolve_user(u))
            .collect::<Result<_, _>>()?;
        let mut images = Vec::new();
        let mut timings = Vec::new();
        // One batch per user: every (prompt, seed) of the request.
        for user in users {
            let batch = request.batch_of(user, self.variant.shift());
            let out = self.generate_batch(&batch, observer)?;
            images.extend(tensor_to_rgb(out.images));
            timings.push(out.timings);
        }
        Ok(Images::new(request, images, timings))
    }

    /// One batch as the pipeline takes it: image `i` is `prompts[i]` for `users[i]` with
    /// `seeds[i]`.
    pub fn generate_batch(
        &mut self,
        request: &GenerateRequest,
        observer: &mut impl StepObserver,
    ) -> Result<Generated<B>, PremierError> {
        Ok(self.generator.generate(request, observer)?)
    }
}

/// A new user's liked images and a caption of each, for [`Premier::new_user`].
#[derive(Debug, Clone)]
pub struct LikedImages<'a> {
    /// Names the user: its file name, and (with the config's seed) its initial state.
    pub id: &'a str,
    /// The images the user likes (any size; see `resolution`).
    pub images: &'a [RgbImage],
    /// One per image.
    pub captions: &'a [String],
    /// Side of the square the images become (a multiple of 16; the released training: 512).
    pub resolution: u32,
    /// How they become it, as `premier encode` does (default: resized whatever their aspect, as
    /// the official training).
    pub preprocess: Preprocess,
}

impl<B: FluxAutodiffBackend> Premier<B> {
    /// The stage-2 cold start in memory: `liked`'s images through the autoencoder and its
    /// captions through T5 and CLIP, then a new user (coefficients over the trained users, or
    /// an embedding of its own, as `config.kind` says) fitted against the frozen adapters and
    /// table. The loop of `premier cold-start`, with its result to f32 rounding on the same
    /// images.
    /// Save it with [`NewUser::save`] and draw it as a [`User::File`].
    pub fn new_user(
        &mut self,
        liked: &LikedImages,
        config: &ColdStartConfig,
    ) -> Result<NewUser<B>, PremierError> {
        self.new_user_with(liked, config, &mut |_| {})
    }

    /// [`Self::new_user`], telling `progress` after every step.
    pub fn new_user_with(
        &mut self,
        liked: &LikedImages,
        config: &ColdStartConfig,
        progress: &mut dyn FnMut(&MetricRecord),
    ) -> Result<NewUser<B>, PremierError> {
        config.validate().map_err(RunError::from)?;
        let (images, captions, side) = (liked.images, liked.captions, liked.resolution);
        if images.is_empty() || images.len() != captions.len() {
            return Err(PremierError::Invalid(format!(
                "a new user needs at least one image and one caption per image: {} images, {} \
                 captions",
                images.len(),
                captions.len()
            )));
        }
        if side == 0 || side % 16 != 0 || side as usize > crate::pipeline::MAX_SIDE {
            return Err(PremierError::Invalid(format!(
                "resolution {side}: a positive multiple of 16, at most {}",
                crate::pipeline::MAX_SIDE
            )));
        }
        let g = &self.generator;
        let (Some(adapter), Some(table)) = (g.adapter(), g.users()) else {
            return Err(PremierError::MissingPart {
                part: "adapter and user table a new user is fitted against",
                hint: "`adapter` and `user_table` to the builder",
            });
        };
        let mut encoders = FluxEncoders {
            vae: g.vae().clone(),
            vae_config: g.vae_config().clone(),
            t5: g.text().t5.clone(),
            clip: g.text().clip.clone(),
            t5_tokenizer: g.text().t5_tokenizer.clone(),
            clip_tokenizer: g.text().clip_tokenizer.clone(),
            resolution: side,
            preprocess: liked.preprocess,
            vae_fingerprint: String::new(),
            text_fingerprint: String::new(),
            device: g.device().clone(),
        };
        let latents = encoders
            .encode_images(images)
            .map_err(|reason| PremierError::Encode {
                what: "images",
                reason,
            })?;
        let texts = encoders
            .encode_captions(captions)
            .map_err(|reason| PremierError::Encode {
                what: "captions",
                reason,
            })?;
        let mut samples = EncodedUsers::one_user(liked.id, latents, texts, "the new user's images");
        let user = fresh_new_user(
            config.kind,
            table.shape(),
            config.stage2.seed,
            liked.id,
            g.device(),
        );
        let mut trainer = Stage2Trainer::new(
            g.flux().clone(),
            adapter.clone(),
            table.clone(),
            user,
            config.stage2.clone(),
        );
        fit_new_user(
            &mut trainer,
            &mut samples,
            0,
            config,
            &mut |_, record| {
                progress(record);
                Ok(())
            },
            g.device(),
        )?;
        Ok(trainer.user()?.clone())
    }
}
