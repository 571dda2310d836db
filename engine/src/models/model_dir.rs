//! Model directories: the on-disk contract between training (Python or Rust) and the engine.
//!
//! A model is a directory holding
//!
//! | file | required | content |
//! |---|---|---|
//! | `config.json` | yes | shapes, under x-transformers' own argument names (below) |
//! | `tokenizer.json` | yes | the MidiTok REMI tokenizer the model was trained with |
//! | `decoder.safetensors` | yes | the PyTorch `TransformerWrapper`'s `state_dict()`, names unchanged |
//! | `adapter.safetensors` | no | a style adapter ([`super::adapter`]) |
//! | `discriminator.safetensors` | no | the training discriminator ([`super::discriminator`]) |
//!
//! `config.json`:
//! ```json
//! {"num_tokens": 373, "max_seq_len": 2048,
//!  "decoder": {"dim": 768, "depth": 12, "heads": 12, "ff_mult": 4, "ff_glu": true, "rotary_pos_emb": true},
//!  "adapter": {"dim": 768, "depth": 4, "heads": 8},
//!  "discriminator": {"dim": 512, "depth": 6, "heads": 8}}
//! ```
//! `num_tokens`, `max_seq_len` and `decoder` are the arguments of
//! `TransformerWrapper(num_tokens, max_seq_len, attn_layers = Decoder(**decoder))`, so a
//! PyTorch model is rebuilt from the same file. Keys left out take x-transformers' defaults
//! (`attn_dim_head` 64, `ff_mult` 4); keys the engine does not implement are refused by name,
//! and so are values it does not implement (`ff_glu` and `rotary_pos_emb` must be `true`). The
//! `adapter` and `discriminator` sections are needed only when their files are present.
//!
//! Loading checks every file against the config before building anything: each expected tensor
//! must be present with the implied shape and a float dtype (F32, F16, BF16, F64; converted to
//! the requested precision), no unexpected tensor may be present, the rotary `inv_freq` buffer
//! (optional) must match, and the tokenizer's vocabulary size must equal `num_tokens`. Every
//! failure is an [`Error`] naming the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{
    Adapter, AdapterConfig, Decoder, DecoderConfig, Discriminator, DiscriminatorConfig, Error,
    KvCache, ModelConfigError, Result,
};
use crate::tokenizer::Tokenizer;

/// File names inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const DECODER_FILE: &str = "decoder.safetensors";
pub const ADAPTER_FILE: &str = "adapter.safetensors";
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size (must equal the tokenizer's).
    pub num_tokens: usize,
    /// Context length the decoder was trained with; longer sequences are scored in windows.
    pub max_seq_len: usize,
    pub decoder: DecoderConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discriminator: Option<DiscriminatorConfig>,
}

impl ModelConfig {
    /// The seed text's model (12 × 768 decoder, context 2048; adapter 4 × 768;
    /// discriminator 6 × 512).
    pub fn seed() -> Self {
        Self {
            num_tokens: 373,
            max_seq_len: 2048,
            decoder: DecoderConfig::seed(),
            adapter: Some(AdapterConfig::seed()),
            discriminator: Some(DiscriminatorConfig::seed()),
        }
    }

    /// The embedded default.
    pub fn small() -> Self {
        Self {
            num_tokens: 373,
            max_seq_len: 1024,
            decoder: DecoderConfig::small(),
            adapter: Some(AdapterConfig::small()),
            discriminator: Some(DiscriminatorConfig::small()),
        }
    }

    /// For tests.
    pub fn tiny() -> Self {
        Self {
            num_tokens: 373,
            max_seq_len: 64,
            decoder: DecoderConfig::tiny(),
            adapter: Some(AdapterConfig::tiny()),
            discriminator: Some(DiscriminatorConfig::tiny()),
        }
    }

    /// Parses and validates `config.json` text; `file` is used in errors.
    pub fn from_json(text: &str, file: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::Config {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|e| Error::Config {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|error| Error::Io {
            file: file.to_path_buf(),
            error,
        })?;
        Self::from_json(&text, file)
    }

    /// Writes `config.json` (pretty-printed).
    pub fn save(&self, file: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a config always serialises");
        std::fs::write(file, text + "\n").map_err(|error| Error::Io {
            file: file.to_path_buf(),
            error,
        })
    }

    /// Refuses values the engine does not implement.
    pub fn validate(&self) -> std::result::Result<(), ModelConfigError> {
        if self.num_tokens == 0 {
            return Err(ModelConfigError::NoTokens);
        }
        if self.max_seq_len < 2 {
            return Err(ModelConfigError::MaxSeqLenTooShort(self.max_seq_len));
        }
        self.decoder.validate()?;
        if let Some(a) = &self.adapter {
            a.validate()?;
        }
        if let Some(d) = &self.discriminator {
            d.validate()?;
            if d.bar_token_id as usize >= self.num_tokens
                || d.pad_token_id as usize >= self.num_tokens
            {
                return Err(ModelConfigError::SpecialTokenOutOfRange {
                    num_tokens: self.num_tokens,
                });
            }
        }
        Ok(())
    }
}

/// Numeric format of the weights at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Full precision (the reference).
    #[default]
    F32,
    /// Half precision weights and activations (GPU; slow on most CPUs).
    F16,
    /// bfloat16 weights and activations.
    BF16,
    /// 8-bit Q8_0 weights with f32 activations: the fast CPU path.
    Q8,
}

impl Precision {
    /// dtype of the loaded tensors (Q8 loads f32 and quantizes afterwards).
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 | Self::Q8 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
}

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub precision: Precision,
    /// Load `adapter.safetensors` when the directory has one.
    pub adapter: bool,
    /// Load `discriminator.safetensors` when the directory has one (training only).
    pub discriminator: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            precision: Precision::F32,
            adapter: true,
            discriminator: false,
        }
    }
}

/// The contents of a model directory's required files (`config.json`, `tokenizer.json`,
/// `decoder.safetensors`), for [`Model::from_files`]; `dir` is where they came from (or a label
/// such as "embedded model"), used to name them in errors.
#[derive(Debug, Clone, Copy)]
pub struct ModelFiles<'a> {
    pub dir: &'a Path,
    pub config: &'a str,
    pub tokenizer: &'a str,
    pub decoder: &'a [u8],
}

/// A loaded model directory.
#[derive(Debug, Clone)]
pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub decoder: Decoder,
    pub adapter: Option<Adapter>,
    pub discriminator: Option<Discriminator>,
}

/// KV caches for a decoder and, when present, its adapter, advanced together.
#[derive(Debug, Clone)]
pub struct ModelCache {
    pub decoder: KvCache,
    pub adapter: Option<KvCache>,
}

impl ModelCache {
    /// Positions processed so far.
    pub fn len(&self) -> usize {
        self.decoder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decoder.is_empty()
    }

    pub fn reset(&mut self) {
        self.decoder.reset();
        if let Some(a) = &mut self.adapter {
            a.reset();
        }
    }

    /// The same cache for the sequences `rows` of its batch only, in that order (a finished
    /// variation leaves the batch); see [`KvCache::select_rows`].
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        Ok(Self {
            decoder: self.decoder.select_rows(rows)?,
            adapter: self
                .adapter
                .as_ref()
                .map(|a| a.select_rows(rows))
                .transpose()?,
        })
    }

    /// A cache continuing this batch-1 one, for as many sequences as the next step feeds
    /// (prefill a prime once, decode K variations); see [`KvCache::fork`].
    pub fn fork(&self) -> candle_core::Result<Self> {
        Ok(Self {
            decoder: self.decoder.fork()?,
            adapter: self.adapter.as_ref().map(KvCache::fork).transpose()?,
        })
    }
}

impl Model {
    /// Loads and checks a model directory (see the module docs for the format).
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let read = |name: &str| {
            let file = dir.join(name);
            std::fs::read(&file).map_err(|error| Error::Io { file, error })
        };
        let text = |name: &str| {
            let bytes = read(name)?;
            String::from_utf8(bytes).map_err(|e| Error::Config {
                file: dir.join(name),
                reason: format!("not UTF-8 text: {e}"),
            })
        };
        let files = ModelFiles {
            dir: &dir,
            config: &text(CONFIG_FILE)?,
            tokenizer: &text(TOKENIZER_FILE)?,
            decoder: &read(DECODER_FILE)?,
        };
        let mut model = Self::from_files(&files, opts)?;
        let adapter_file = dir.join(ADAPTER_FILE);
        if opts.adapter && adapter_file.exists() {
            model.load_adapter(&adapter_file, opts)?;
        }
        let disc_file = dir.join(DISCRIMINATOR_FILE);
        if opts.discriminator && disc_file.exists() {
            model.load_discriminator(&disc_file, opts)?;
        }
        Ok(model)
    }

    /// Builds a model from the contents of a model directory's three required files, checked
    /// as [`Model::load`] checks them (errors name `files.dir`'s files). This is how a program
    /// ships a model inside its binary (`include_bytes!`): the plugin embeds the default model
    /// so that a bundle copied onto another machine still has it.
    pub fn from_files(files: &ModelFiles<'_>, opts: &LoadOptions) -> Result<Self> {
        let dir = files.dir.to_path_buf();
        let config = ModelConfig::from_json(files.config, &dir.join(CONFIG_FILE))?;
        let tok_file = dir.join(TOKENIZER_FILE);
        let tokenizer = Tokenizer::from_json(files.tokenizer).map_err(|e| Error::Config {
            file: tok_file.clone(),
            reason: format!("cannot load the tokenizer: {e}"),
        })?;
        if tokenizer.vocab_size() != config.num_tokens {
            return Err(Error::VocabSize {
                file: tok_file,
                expected: config.num_tokens,
                found: tokenizer.vocab_size(),
            });
        }
        let dtype = opts.precision.dtype();
        let dev = &opts.device;
        let decoder = load_decoder(&dir.join(DECODER_FILE), files.decoder, &config, dtype, dev)?;
        let decoder = if opts.precision == Precision::Q8 {
            decoder.quantize()?
        } else {
            decoder
        };
        Ok(Self {
            dir,
            config,
            tokenizer,
            decoder,
            adapter: None,
            discriminator: None,
        })
    }

    /// A model with random (N(0, 0.02)) decoder weights and no adapter, for tests and speed
    /// measurements, which need the shapes but not the training. The weights are frozen
    /// tensors, as after [`Model::load`], so inference takes the same kernels.
    pub fn random(config: ModelConfig, tokenizer: Tokenizer, device: &Device) -> Result<Self> {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        Decoder::new(config.num_tokens, &config.decoder, vb)?;
        let frozen: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect();
        let decoder = Decoder::new(
            config.num_tokens,
            &config.decoder,
            VarBuilder::from_tensors(frozen, DType::F32, device),
        )?;
        Ok(Self {
            dir: PathBuf::from("<random weights>"),
            config,
            tokenizer,
            decoder,
            adapter: None,
            discriminator: None,
        })
    }

    /// Loads (or swaps in) a style adapter file. Its shape comes from the file's header when
    /// it records one (adapters written by `train adapter` do), else from `config.json`; a file
    /// trained for another decoder shape is refused, naming both shapes.
    pub fn load_adapter(&mut self, file: &Path, opts: &LoadOptions) -> Result<()> {
        let meta = read_metadata(file)?;
        if let Some(text) = meta.get(META_DECODER) {
            let trained: DecoderConfig = serde_json::from_str(text).map_err(|e| Error::Config {
                file: file.to_path_buf(),
                reason: format!("unreadable \"{META_DECODER}\" in the header: {e}"),
            })?;
            let tokens = meta
                .get(META_NUM_TOKENS)
                .and_then(|t| t.parse::<usize>().ok());
            if trained != self.config.decoder || tokens.is_some_and(|t| t != self.config.num_tokens)
            {
                return Err(Error::Config {
                    file: file.to_path_buf(),
                    reason: format!(
                        "this adapter was trained for another decoder ({} × {} over {} tokens); the model in {} has {} × {} over {}",
                        trained.depth,
                        trained.dim,
                        tokens.map_or("?".to_string(), |t| t.to_string()),
                        self.dir.display(),
                        self.config.decoder.depth,
                        self.config.decoder.dim,
                        self.config.num_tokens
                    ),
                });
            }
        }
        let cfg = header_shape(
            &meta,
            META_ADAPTER,
            file,
            AdapterConfig::validate,
            self.config.adapter.as_ref(),
            &self.dir.join(CONFIG_FILE),
            "adapter",
        )?;
        let dim = self.config.decoder.dim;
        let specs = Adapter::tensor_specs(&cfg, dim, self.config.num_tokens);
        let dtype = opts.precision.dtype();
        let tensors = load_checked(file, &specs, dtype, &opts.device)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, &opts.device);
        let adapter = Adapter::new(&cfg, dim, self.config.num_tokens, vb)?;
        self.adapter = Some(if opts.precision == Precision::Q8 {
            adapter.quantize()?
        } else {
            adapter
        });
        Ok(())
    }

    /// Loads a discriminator file (training, and reranking at play time). Its shape comes from
    /// the file's header when it records one, else from `config.json`.
    pub fn load_discriminator(&mut self, file: &Path, opts: &LoadOptions) -> Result<()> {
        let meta = read_metadata(file)?;
        let cfg = header_shape(
            &meta,
            META_DISCRIMINATOR,
            file,
            DiscriminatorConfig::validate,
            self.config.discriminator.as_ref(),
            &self.dir.join(CONFIG_FILE),
            "discriminator",
        )?;
        if let Some(t) = meta
            .get(META_NUM_TOKENS)
            .and_then(|t| t.parse::<usize>().ok())
        {
            if t != self.config.num_tokens {
                return Err(Error::Config {
                    file: file.to_path_buf(),
                    reason: format!(
                        "this discriminator reads {t} tokens; the model has {}",
                        self.config.num_tokens
                    ),
                });
            }
        }
        let specs =
            Discriminator::tensor_specs(self.config.num_tokens, self.config.decoder.dim, &cfg);
        // The discriminator trains: never quantized.
        let dtype = opts.precision.dtype();
        let dev = &opts.device;
        let tensors = load_checked(file, &specs, dtype, dev)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, dev);
        self.discriminator = Some(Discriminator::with_decoder(&self.decoder, &cfg, vb)?);
        Ok(())
    }

    /// Empty caches for the decoder and adapter, with room for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> ModelCache {
        ModelCache {
            decoder: self.decoder.new_cache(capacity),
            adapter: self.adapter.as_ref().map(|a| a.new_cache(capacity)),
        }
    }

    /// Feeds `ids` `(b, t)` (u32) after the cached positions and returns logits
    /// `(b, t, num_tokens)`: the adapter's when one is loaded, else the decoder's. `t > 1` is a
    /// prefill, `t = 1` one decoding step for every sequence of the batch.
    pub fn step(&self, ids: &Tensor, cache: &mut ModelCache) -> candle_core::Result<Tensor> {
        in_pool(self.decoder.device(), || self.step_here(ids, cache))
    }

    fn step_here(&self, ids: &Tensor, cache: &mut ModelCache) -> candle_core::Result<Tensor> {
        match (&self.adapter, &mut cache.adapter) {
            (Some(adapter), Some(acache)) => {
                let h = self.decoder.forward_hidden(
                    ids,
                    Some(&mut cache.decoder),
                    super::Kernels::Inference,
                )?;
                adapter.forward(&h, Some(acache))
            }
            (Some(_), None) => candle_core::bail!(
                "the model has an adapter but the cache has none: use Model::new_cache"
            ),
            (None, _) => self.decoder.forward(ids, Some(&mut cache.decoder)),
        }
    }

    /// Full-sequence logits without a cache (decoder + adapter when loaded).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match &self.adapter {
            Some(a) => a.forward(
                &self
                    .decoder
                    .forward_hidden(ids, None, super::Kernels::Inference)?,
                None,
            ),
            None => self.decoder.forward(ids, None),
        }
    }
}

/// Runs `f` on a thread of candle's CPU thread pool (inline when already on one).
///
/// A decoding step is some thirty small kernels (norms, rotary, softmax) that each split their
/// rows with rayon. Called from a thread outside the pool, every one of them hands its work to a
/// pool thread and sleeps until it is done: two context switches per kernel, which on one core
/// cost as much as the step's arithmetic. From inside the pool they run inline or split directly.
pub(crate) fn in_pool<R: Send>(dev: &Device, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        dev.with_context(f)
    }
}

fn load_decoder(
    file: &Path,
    bytes: &[u8],
    cfg: &ModelConfig,
    dtype: DType,
    dev: &Device,
) -> Result<Decoder> {
    let specs = Decoder::tensor_specs(cfg.num_tokens, &cfg.decoder);
    let mut tensors = check_tensors(file, bytes, &specs, dtype, dev)?;
    let vb_tensors = std::mem::take(&mut tensors);
    let decoder = Decoder::new(
        cfg.num_tokens,
        &cfg.decoder,
        VarBuilder::from_tensors(vb_tensors.clone(), dtype, dev),
    )?;
    // inv_freq is a buffer PyTorch saves; when present it must agree with the config (it is
    // how a different rotary base or dimension would show up).
    let name = "attn_layers.rotary_pos_emb.inv_freq";
    if let Some(found) = vb_tensors.get(name) {
        let found: Vec<f64> = found.to_dtype(DType::F64)?.to_vec1()?;
        let (_, expected) = &decoder.buffers()?[0];
        let expected: Vec<f64> = expected.to_dtype(DType::F64)?.to_vec1()?;
        // Relative 1e-2: loose enough for a buffer saved in f16/bf16, tight enough for any
        // other base or dimension.
        let tol = 1e-2;
        if let Some((i, (f, e))) = found
            .iter()
            .zip(&expected)
            .enumerate()
            .find(|(_, (f, e))| (*f - *e).abs() > tol * e.abs().max(1e-6))
        {
            return Err(Error::Value {
                file: file.to_path_buf(),
                tensor: name.into(),
                reason: format!(
                    "element {i} is {f}, but rotary base 10000 with this config gives {e}"
                ),
            });
        }
    }
    Ok(decoder)
}

/// Names of tensors a file may hold or omit (buffers, not parameters).
fn optional(name: &str) -> bool {
    name.ends_with("rotary_pos_emb.inv_freq")
}

/// Reads a safetensors file and checks it against `specs` (name → shape): every tensor
/// present, shapes equal, float dtypes, nothing unexpected. Returns the tensors in `dtype`.
pub fn load_checked(
    file: &Path,
    specs: &[(String, Vec<usize>)],
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(file).map_err(|error| Error::Io {
        file: file.to_path_buf(),
        error,
    })?;
    check_tensors(file, &bytes, specs, dtype, device)
}

/// [`load_checked`] on a safetensors file's contents already in memory (`file` names it in
/// errors).
pub fn check_tensors(
    file: &Path,
    bytes: &[u8],
    specs: &[(String, Vec<usize>)],
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let expected: HashMap<&str, &Vec<usize>> = specs.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in &names {
        if !expected.contains_key(name.as_str()) {
            return Err(Error::UnexpectedTensor {
                file: file.to_path_buf(),
                tensor: name.clone(),
            });
        }
    }
    let mut out = HashMap::with_capacity(specs.len());
    for (name, shape) in specs {
        let view = match st.tensor(name) {
            Ok(v) => v,
            Err(_) if optional(name) => continue,
            Err(_) => {
                return Err(Error::MissingTensor {
                    file: file.to_path_buf(),
                    tensor: name.clone(),
                })
            }
        };
        if view.shape() != shape.as_slice() {
            return Err(Error::Shape {
                file: file.to_path_buf(),
                tensor: name.clone(),
                expected: shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        use safetensors::Dtype as S;
        let src_dtype = match view.dtype() {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F64 => DType::F64,
            other => {
                return Err(Error::DType {
                    file: file.to_path_buf(),
                    tensor: name.clone(),
                    found: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), src_dtype, view.shape(), device)?;
        let t = t.to_dtype(dtype)?;
        // Non-finite weights would turn every output NaN; catch them here, by name.
        let bad = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .any(|v| !v.is_finite());
        if bad {
            return Err(Error::Value {
                file: file.to_path_buf(),
                tensor: name.clone(),
                reason: "holds NaN or infinite values".into(),
            });
        }
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Writes tensors as a safetensors file (f32 unless they already have another float dtype).
pub fn save_safetensors(file: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    candle_core::safetensors::save(tensors, file).map_err(|e| match e {
        candle_core::Error::Io(error) => Error::Io {
            file: file.to_path_buf(),
            error,
        },
        other => Error::Candle(other),
    })
}

impl Model {
    /// The device the decoder's weights live on.
    pub fn decoder_device(&self) -> &Device {
        self.decoder.device()
    }
}

/// Header keys of adapter and discriminator files that record what they were trained for.
const META_ADAPTER: &str = "adapter";
const META_DISCRIMINATOR: &str = "discriminator";
const META_DECODER: &str = "decoder";
const META_NUM_TOKENS: &str = "num_tokens";

/// The header metadata of an adapter file: its own shape and the decoder's it was trained on.
pub fn adapter_metadata(
    adapter: &AdapterConfig,
    decoder: &DecoderConfig,
    num_tokens: usize,
) -> HashMap<String, String> {
    HashMap::from([
        (
            META_ADAPTER.into(),
            serde_json::to_string(adapter).expect("serialises"),
        ),
        (
            META_DECODER.into(),
            serde_json::to_string(decoder).expect("serialises"),
        ),
        (META_NUM_TOKENS.into(), num_tokens.to_string()),
    ])
}

/// The header metadata of a discriminator file.
pub fn discriminator_metadata(
    discriminator: &DiscriminatorConfig,
    num_tokens: usize,
) -> HashMap<String, String> {
    HashMap::from([
        (
            META_DISCRIMINATOR.into(),
            serde_json::to_string(discriminator).expect("serialises"),
        ),
        (META_NUM_TOKENS.into(), num_tokens.to_string()),
    ])
}

/// A safetensors file's header metadata (empty when it has none).
/// A network's shape as `file`'s safetensors header records it under `key` (files written by
/// training carry their shape), else the `section` of the model's `config_file` — the two
/// places an adapter's or a discriminator's shape can come from.
fn header_shape<T: serde::de::DeserializeOwned + Clone>(
    meta: &HashMap<String, String>,
    key: &str,
    file: &Path,
    validate: impl Fn(&T) -> std::result::Result<(), ModelConfigError>,
    config: Option<&T>,
    config_file: &Path,
    section: &str,
) -> Result<T> {
    match meta.get(key) {
        Some(text) => {
            let cfg: T = serde_json::from_str(text).map_err(|e| Error::Config {
                file: file.to_path_buf(),
                reason: format!("unreadable \"{key}\" in the header: {e}"),
            })?;
            validate(&cfg).map_err(|e| Error::Config {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;
            Ok(cfg)
        }
        None => config.cloned().ok_or_else(|| Error::Config {
            file: config_file.to_path_buf(),
            reason: format!(
                "{} records no {section} shape and config.json has no \"{section}\" section",
                file.display()
            ),
        }),
    }
}

fn read_metadata(file: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|error| Error::Io {
        file: file.to_path_buf(),
        error,
    })?;
    let bad = |reason: String| Error::Safetensors {
        file: file.to_path_buf(),
        reason,
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(format!("a header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("the header is truncated".into()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable header: {e}")))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default())
}
