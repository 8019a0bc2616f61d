//! The held-out loss of the merged model: the slivers' committed weights, put back together
//! and run on validation data the miners never train on.
//!
//! Miners draw their micro-batches from the training split only (`Split::Train`); the
//! validation split is the last tenth of the run's text. A validator that holds each sliver's
//! committed state evaluates the whole model on a fixed set of validation micro-batches (the
//! same every epoch, so the figures compare), passing activations between slivers through
//! the wire codec as miners do.

use sliver_engine::codec::{decode_tensor, encode_tensor, WireCodec};
use sliver_engine::data::{BatchKey, Split};
use sliver_engine::merge::{import_flat, Flat};
use sliver_engine::model::cross_entropy;
use sliver_engine::SliverInput;

use crate::replay::Replayer;

impl Replayer {
    /// The mean cross-entropy of the model whose slivers hold `weights` (one set per sliver,
    /// in order) over `batches` validation micro-batches of the run's shape, activations
    /// crossing slivers as `codec` encodes them. CPU-bound.
    pub fn eval_loss(
        &mut self,
        weights: &[Flat],
        batches: u64,
        codec: WireCodec,
    ) -> Result<f32, String> {
        let shape = self.shape().clone();
        if weights.len() != shape.slivers() as usize {
            return Err(format!("{} weight sets for {} slivers", weights.len(), shape.slivers()));
        }
        let data = self.data();
        for (s, w) in weights.iter().enumerate() {
            let loaded = self.loaded(s as u16)?;
            import_flat(&mut loaded.trainer.sliver, w).map_err(|e| format!("sliver {s}: {e}"))?;
        }
        let (batch, seq) = (shape.batch, shape.seq);
        let last = shape.slivers() - 1;
        let mut sum = 0f64;
        let mut run = || -> Result<(), String> {
            for i in 0..batches.max(1) {
                let key = BatchKey { run: shape.run, epoch: 0, replica: 0, step: i, index: 0 };
                let mb =
                    data.micro_batch(Split::Val, key, batch, seq).map_err(|e| e.to_string())?;
                let t = &self.loaded(0)?.trainer;
                let tokens = t.tokens(&mb.inputs, batch, seq).map_err(|e| e.to_string())?;
                let mut x =
                    t.sliver.forward(SliverInput::Tokens(tokens)).map_err(|e| e.to_string())?;
                for s in 1..=last {
                    let t = &self.loaded(s)?.trainer;
                    let dims = x.dims();
                    let frame = encode_tensor(codec, &x.inner());
                    let recv =
                        decode_tensor(&frame, dims, t.device()).map_err(|e| e.to_string())?;
                    x = t.sliver.forward(SliverInput::Hidden(recv)).map_err(|e| e.to_string())?;
                }
                let t = &self.loaded(last)?.trainer;
                let targets = t.tokens(&mb.targets, batch, seq).map_err(|e| e.to_string())?;
                sum += f64::from(cross_entropy(x, targets).inner().into_scalar::<f32>());
            }
            Ok(())
        };
        let result = run();
        // The loaded weights changed: the next replay loads its own.
        self.unload();
        result?;
        Ok((sum / batches.max(1) as f64) as f32)
    }
}
