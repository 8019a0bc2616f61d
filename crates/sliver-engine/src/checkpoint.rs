//! Checkpoints: a sliver or a whole model as safetensors with GPT-2 parameter names.
//!
//! The file's metadata holds the model configuration (JSON) and which sliver it is, so a file
//! is self-describing; loading checks every name, shape and value before touching the model.
//! A whole model is assembled from its slivers' files by taking each parameter from the file
//! that holds it (a tied `lm_head` copy is dropped: the whole model keeps both copies equal).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use burn::tensor::Device;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::config::{GptConfig, SliverSpec};
use crate::merge::{export_flat, import_flat, Flat};
use crate::model::Sliver;
use crate::EngineError;

/// Largest checkpoint file read (bytes).
pub const MAX_CHECKPOINT_BYTES: u64 = 16 << 30;

/// What a checkpoint file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// The model it belongs to.
    pub config: GptConfig,
    /// Which sliver (the whole model is sliver 0 of 1).
    pub spec: SliverSpec,
    /// Learned bottleneck width, if any.
    pub bottleneck: Option<usize>,
}

/// Writes a sliver's parameters to `path`.
pub fn save_sliver(
    sliver: &mut Sliver,
    info: &CheckpointInfo,
    path: &Path,
) -> Result<(), EngineError> {
    let flat = export_flat(sliver);
    let bytes = to_bytes(&flat, sliver, info)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err(path, e))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn io_err(p: &Path, e: std::io::Error) -> EngineError {
    EngineError::Checkpoint(format!("{}: {e}", p.display()))
}

fn to_bytes(
    flat: &Flat,
    sliver: &mut Sliver,
    info: &CheckpointInfo,
) -> Result<Vec<u8>, EngineError> {
    let shapes: HashMap<String, Vec<usize>> =
        sliver.params_mut().into_iter().map(|(n, p)| (n, p.shape())).collect();
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = flat
        .iter()
        .map(|(n, v)| {
            (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), shapes[n].clone())
        })
        .collect();
    let views = raw
        .iter()
        .map(|(n, b, s)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "sliver-gpt".to_string());
    meta.insert("config".to_string(), serde_json::to_string(&info.config).unwrap_or_default());
    meta.insert("sliver_index".to_string(), info.spec.index.to_string());
    meta.insert("sliver_count".to_string(), info.spec.count.to_string());
    meta.insert(
        "layers".to_string(),
        format!("{}..{}", info.spec.layers.start, info.spec.layers.end),
    );
    if let Some(k) = info.bottleneck {
        meta.insert("bottleneck".to_string(), k.to_string());
    }
    safetensors::serialize(views, Some(meta)).map_err(|e| EngineError::Checkpoint(e.to_string()))
}

/// Reads a checkpoint's description and tensors (f32 only).
pub fn read(path: &Path) -> Result<(CheckpointInfo, Flat), EngineError> {
    let len = fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if len > MAX_CHECKPOINT_BYTES {
        return Err(EngineError::Checkpoint(format!(
            "{} is over {MAX_CHECKPOINT_BYTES} bytes",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    parse(&bytes).map_err(|e| EngineError::Checkpoint(format!("{}: {e}", path.display())))
}

/// Parses checkpoint bytes (untrusted: every field is checked).
pub fn parse(bytes: &[u8]) -> Result<(CheckpointInfo, Flat), EngineError> {
    let bad = |m: String| EngineError::Checkpoint(m);
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("sliver-gpt") {
        return Err(bad("not a Sliver checkpoint (metadata format != sliver-gpt)".into()));
    }
    let config: GptConfig =
        serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad config metadata: {e}")))?;
    config.validate()?;
    let num = |k: &str| -> Result<usize, EngineError> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("missing or bad metadata {k}")))
    };
    let (index, count) = (num("sliver_index")?, num("sliver_count")?);
    let specs = SliverSpec::split(config.n_layer, count)?;
    let spec =
        specs.get(index).cloned().ok_or_else(|| bad(format!("sliver {index} of {count}")))?;
    let bottleneck = meta
        .get("bottleneck")
        .map(|v| v.parse::<usize>())
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let mut flat = Flat::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        flat.insert(name, v);
    }
    Ok((CheckpointInfo { config, spec, bottleneck }, flat))
}

/// Loads a sliver from its file onto `device`.
pub fn load_sliver(path: &Path, device: &Device) -> Result<(CheckpointInfo, Sliver), EngineError> {
    let (info, flat) = read(path)?;
    let mut sliver = Sliver::new(&info.config, &info.spec, info.bottleneck, device)?;
    import_flat(&mut sliver, &flat)?;
    Ok((info, sliver))
}

/// Assembles the whole model from the files of all its slivers (any order).
pub fn assemble(paths: &[&Path], device: &Device) -> Result<(GptConfig, Sliver), EngineError> {
    let mut config: Option<GptConfig> = None;
    let mut seen = Vec::new();
    let mut all = Flat::new();
    for p in paths {
        let (info, flat) = read(p)?;
        if info.bottleneck.is_some() {
            return Err(EngineError::Checkpoint(
                "slivers with a learned bottleneck cannot be assembled into the plain model".into(),
            ));
        }
        match &config {
            Some(c) if *c != info.config => {
                return Err(EngineError::Checkpoint(format!(
                    "{} belongs to another model",
                    p.display()
                )))
            }
            _ => config = Some(info.config.clone()),
        }
        if seen.contains(&info.spec.index) {
            return Err(EngineError::Checkpoint(format!("sliver {} given twice", info.spec.index)));
        }
        seen.push(info.spec.index);
        for (k, v) in flat {
            if k == "lm_head.weight" && info.config.tie_embeddings && all.contains_key("wte.weight")
            {
                continue;
            }
            all.insert(k, v);
        }
    }
    let config = config.ok_or_else(|| EngineError::Checkpoint("no checkpoint given".into()))?;
    if config.tie_embeddings && !all.contains_key("lm_head.weight") {
        if let Some(w) = all.get("wte.weight").cloned() {
            all.insert("lm_head.weight".into(), w);
        }
    }
    let mut model = Sliver::new(&config, &SliverSpec::whole(config.n_layer), None, device)?;
    import_flat(&mut model, &all)?;
    Ok((config, model))
}
