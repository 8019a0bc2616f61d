//! Boundary codecs as seen by the engine: the wire formats of `sliver-wire`, plus encoding and
//! decoding of Burn tensors. The learned bottleneck is not a wire format but a pair of
//! projections in the slivers themselves (see [`crate::model::Bottleneck`]).

use burn::tensor::{Device, Tensor, TensorData};

pub use sliver_wire::{decode, encode, CodecError, Decoded, WireCodec, MAX_RANK};

/// Encodes a rank-3 tensor (`[batch, seq, width]`).
pub fn encode_tensor(codec: WireCodec, t: &Tensor<3>) -> Vec<u8> {
    let shape = t.dims();
    let values = t.try_to_vec_as::<f32>().unwrap_or_default();
    encode(codec, &shape, &values)
}

/// Decodes a rank-3 tensor whose shape must be `expected` and puts it on `device`.
pub fn decode_tensor(
    bytes: &[u8],
    expected: [usize; 3],
    device: &Device,
) -> Result<Tensor<3>, CodecError> {
    let max = expected.iter().product::<usize>();
    let d = decode(bytes, max)?;
    if d.shape != expected {
        return Err(CodecError::UnexpectedShape { want: expected.to_vec(), got: d.shape });
    }
    Ok(Tensor::<3>::from_data(TensorData::new(d.values, expected), device))
}
