//! Fast paths for the operations that dominate a training step on the CPU, wired into Burn as a
//! backend extension ([`SliverOps`]).
//!
//! On the `flex` backend they run `sliver-kernels`: a packed GEMM (about twice Burn's own on
//! the step's shapes), a one-pass exact GELU and a causal attention that reads the fused QKV
//! projection in place. Under autodiff they record their own backward passes, which call the
//! same kernels. On other backends (wgpu, CUDA) `matmul` and `gelu` fall back to Burn's standard
//! operations; attention and layer norm have no fallback here, so the model asks
//! [`fused_supported`] and uses Burn's own modules where it says no.
//!
//! The kernels are deterministic: the same inputs give the same bits for any thread count, and
//! on any CPU (see `sliver_kernels::gemm`), which audit replay relies on.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::DispatchDevice;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::DType;
use burn::tensor::{Device, Tensor};
use sliver_kernels::adamw::AdamWInputs;
pub use sliver_kernels::adamw::AdamWStep;

/// Target classes of a cross-entropy, one per row (shared, not a tensor: the kernel reads them
/// on the host).
pub type Targets = std::sync::Arc<[u32]>;
use sliver_kernels::MatRef;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Kinds of kernel whose wall time [`kernel_times`] reports.
const KINDS: [&str; 6] = ["GEMM", "attention", "GELU", "layer norm", "AdamW", "cross-entropy"];
const GEMM: usize = 0;
const ATTENTION: usize = 1;
const GELU: usize = 2;
const LAYER_NORM: usize = 3;
const OPTIMISER: usize = 4;
const CROSS_ENTROPY: usize = 5;
static KERNEL_NS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Runs `f`, adding its wall time to kernel kind `kind`.
fn timed<R>(kind: usize, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    KERNEL_NS[kind].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Wall time spent in this module's CPU kernels (all threads of one call counted once) since
/// the previous call, per kind, in seconds; resets the counters. For benchmarks' breakdowns.
pub fn kernel_times() -> Vec<(&'static str, f64)> {
    KINDS
        .iter()
        .zip(&KERNEL_NS)
        .map(|(k, ns)| (*k, ns.swap(0, Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// The default body of the operations only `flex` has: callers check [`fused_supported`] first.
fn no_kernel() -> ! {
    unimplemented!("no CPU kernel on this backend: check fused_supported")
}

/// The engine's backend extension: operations with a fast CPU path and a custom backward pass.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"))]
pub trait SliverOps: Backend {
    /// Product of two matrices `[m, k] x [k, n]`.
    fn sliver_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// The exact (erf) GELU, element-wise.
    fn sliver_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad * GELU'(x)`: the GELU's input gradient.
    fn sliver_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }

    /// Layer normalisation over the last dimension, no bias: `(x - mean) / sqrt(var + eps) w`.
    /// Only `flex` has it (see [`fused_supported`]).
    fn sliver_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let _ = (x, w, eps);
        no_kernel()
    }

    /// The input gradient of [`SliverOps::sliver_layer_norm`] given the output's, `dy`.
    fn sliver_layer_norm_grad_input(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let _ = (x, w, dy, eps);
        no_kernel()
    }

    /// The weight gradient of [`SliverOps::sliver_layer_norm`] given the output's, `dy`.
    fn sliver_layer_norm_grad_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let _ = (x, dy, eps);
        no_kernel()
    }

    /// One AdamW update of a flat parameter `p` with gradient `g` and moments `m`, `v`: the
    /// updated `[p, m, v]` as the rows of a `[3, n]` tensor. Only `flex` has it (see
    /// [`fused_supported`]).
    fn sliver_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> FloatTensor<Self> {
        let _ = (p, g, m, v, step);
        no_kernel()
    }

    /// Mean cross-entropy of `logits` `[rows, classes]` against `targets` (one per row, each
    /// below `classes`), fused with the softmax: a flat `[1 + rows x classes]` tensor holding
    /// the loss, then the softmax probabilities that the backward pass uses. Only `flex` has
    /// it (see [`fused_supported`]).
    fn sliver_cross_entropy(logits: FloatTensor<Self>, targets: Targets) -> FloatTensor<Self> {
        let _ = (logits, targets);
        no_kernel()
    }

    /// The logits' gradient `(probs - onehot(targets)) dloss / rows`, `dloss` a one-element
    /// tensor.
    fn sliver_cross_entropy_backward(
        probs: FloatTensor<Self>,
        targets: Targets,
        dloss: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _ = (probs, targets, dloss);
        no_kernel()
    }

    /// Causal self-attention from the fused projection `[batch, seq, 3 width]` to the
    /// head-merged output `[batch, seq, width]`. Only `flex` has it: callers check
    /// [`fused_supported`] and take Burn's attention elsewhere.
    fn sliver_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let _ = (qkv, heads);
        no_kernel()
    }

    /// The probabilities `[batch, heads, seq, seq]` of [`SliverOps::sliver_attention`].
    fn sliver_attention_probs(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let _ = (qkv, heads);
        no_kernel()
    }

    /// The output `probs v` of [`SliverOps::sliver_attention`].
    fn sliver_attention_apply(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let _ = (qkv, probs, heads);
        no_kernel()
    }

    /// The projection's gradient given the output's, `dy`.
    fn sliver_attention_backward(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let _ = (qkv, probs, dy, heads);
        no_kernel()
    }
}

impl SliverOps for Flex {
    fn sliver_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match flex_matmul(&lhs, &rhs) {
            Some(out) => out,
            None => Self::float_matmul(lhs, rhs),
        }
    }

    fn sliver_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return Self::gelu(x);
        }
        let x = contiguous(x);
        let src = f32s(&x, "gelu input");
        new_f32(GELU, x.layout().shape().clone(), |out| {
            sliver_kernels::gelu::gelu_forward(src, out)
        })
    }

    fn sliver_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return Self::gelu_backward(x, grad);
        }
        let (x, grad) = (contiguous(x), contiguous(grad));
        new_f32(GELU, x.layout().shape().clone(), |out| {
            sliver_kernels::gelu::gelu_backward(
                f32s(&x, "gelu input"),
                f32s(&grad, "gelu gradient"),
                out,
            )
        })
    }

    fn sliver_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (x, w) = (contiguous(x), contiguous(w));
        check_norm_width(&x, &w);
        new_f32(LAYER_NORM, x.layout().shape().clone(), |y| {
            sliver_kernels::layernorm::layer_norm_forward(
                f32s(&x, "layer norm input"),
                f32s(&w, "layer norm weight"),
                eps,
                y,
            )
        })
    }

    fn sliver_layer_norm_grad_input(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (x, w, dy) = (contiguous(x), contiguous(w), contiguous(dy));
        check_norm_width(&x, &w);
        new_f32(LAYER_NORM, x.layout().shape().clone(), |dx| {
            sliver_kernels::layernorm::layer_norm_grad_input(
                f32s(&x, "layer norm input"),
                f32s(&w, "layer norm weight"),
                f32s(&dy, "layer norm gradient"),
                eps,
                dx,
            )
        })
    }

    fn sliver_layer_norm_grad_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (x, dy) = (contiguous(x), contiguous(dy));
        let dims = x.layout().shape();
        let d = dims[dims.num_dims() - 1];
        new_f32(LAYER_NORM, [d], |dw| {
            sliver_kernels::layernorm::layer_norm_grad_weight(
                f32s(&x, "layer norm input"),
                f32s(&dy, "layer norm gradient"),
                eps,
                dw,
            )
        })
    }

    fn sliver_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> FloatTensor<Self> {
        let (p, g, m, v) = (contiguous(p), contiguous(g), contiguous(m), contiguous(v));
        let n = p.layout().shape().num_elements();
        let inputs = AdamWInputs {
            p: f32s(&p, "adamw parameter"),
            g: f32s(&g, "adamw gradient"),
            m: f32s(&m, "adamw first moment"),
            v: f32s(&v, "adamw second moment"),
        };
        new_f32(OPTIMISER, [3, n], |out| sliver_kernels::adamw::adamw_step(step, inputs, out))
    }

    fn sliver_cross_entropy(logits: FloatTensor<Self>, targets: Targets) -> FloatTensor<Self> {
        let logits = contiguous(logits);
        let n = logits.layout().shape().num_elements();
        let v = n / targets.len().max(1);
        new_f32(CROSS_ENTROPY, [1 + n], |out| {
            let (loss, probs) = out.split_at_mut(1);
            let l = sliver_kernels::xent::cross_entropy_forward(
                f32s(&logits, "logits"),
                &targets,
                v,
                probs,
            );
            loss[0].write(l);
        })
    }

    fn sliver_cross_entropy_backward(
        probs: FloatTensor<Self>,
        targets: Targets,
        dloss: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (probs, dloss) = (contiguous(probs), contiguous(dloss));
        let n = probs.layout().shape().num_elements();
        let rows = targets.len().max(1);
        let scale = f32s(&dloss, "loss gradient")[0] / rows as f32;
        new_f32(CROSS_ENTROPY, [rows, n / rows], |out| {
            sliver_kernels::xent::cross_entropy_backward(
                f32s(&probs, "probabilities"),
                &targets,
                n / rows,
                scale,
                out,
            )
        })
    }

    fn sliver_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let probs = Self::sliver_attention_probs(qkv.clone(), heads);
        Self::sliver_attention_apply(qkv, probs, heads)
    }

    fn sliver_attention_probs(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let s = attn_shape(&qkv, heads);
        let qkv = contiguous(qkv);
        new_f32(ATTENTION, [s.batch, s.heads, s.seq, s.seq], |probs| {
            sliver_kernels::attention::causal_attention_probs(s, f32s(&qkv, "qkv"), probs)
        })
    }

    fn sliver_attention_apply(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let s = attn_shape(&qkv, heads);
        let (qkv, probs) = (contiguous(qkv), contiguous(probs));
        new_f32(ATTENTION, [s.batch, s.seq, s.heads * s.head_dim], |y| {
            sliver_kernels::attention::causal_attention_apply(
                s,
                f32s(&qkv, "qkv"),
                f32s(&probs, "attention probabilities"),
                y,
            )
        })
    }

    fn sliver_attention_backward(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let s = attn_shape(&qkv, heads);
        let (qkv, probs, dy) = (contiguous(qkv), contiguous(probs), contiguous(dy));
        new_f32(ATTENTION, qkv.layout().shape().clone(), |dqkv| {
            sliver_kernels::attention::causal_attention_backward(
                s,
                f32s(&qkv, "qkv"),
                f32s(&probs, "attention probabilities"),
                f32s(&dy, "attention gradient"),
                dqkv,
            )
        })
    }
}

/// The attention shape of a `[batch, seq, 3 width]` f32 projection split into `heads`; the
/// model builds these, so a mismatch is a bug and panics with the shapes.
fn attn_shape(qkv: &FlexTensor, heads: usize) -> sliver_kernels::attention::AttnShape {
    let dims = qkv.layout().shape();
    assert!(
        qkv.dtype() == DType::F32
            && dims.num_dims() == 3
            && heads > 0
            && dims[2].is_multiple_of(3 * heads),
        "attention: {:?} {:?} is not an f32 [batch, seq, 3 x {heads} heads x head width] projection",
        qkv.dtype(),
        dims
    );
    sliver_kernels::attention::AttnShape {
        batch: dims[0],
        seq: dims[1],
        heads,
        head_dim: dims[2] / (3 * heads),
    }
}

/// A dense f32 tensor of `shape` whose every value `fill` writes (timed as kernel `kind`),
/// allocated as `f32`s without zero-filling first. (flex's own `FlexTensor::empty` zero-fills a
/// byte vector, whose alignment of 1 then makes `Bytes` copy it into an aligned allocation:
/// twice the memory traffic.)
fn new_f32(
    kind: usize,
    shape: impl Into<burn::tensor::Shape>,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> FlexTensor {
    let shape = shape.into();
    let n = shape.num_elements();
    let mut values = Vec::<f32>::with_capacity(n);
    timed(kind, || fill(&mut values.spare_capacity_mut()[..n]));
    // SAFETY: every kernel passed as `fill` writes all of its output (their contract).
    unsafe { values.set_len(n) };
    FlexTensor::new(burn::tensor::Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

/// A layer norm's weight must be as wide as the input's last dimension; the model builds both,
/// so a mismatch is a bug and panics with the shapes.
fn check_norm_width(x: &FlexTensor, w: &FlexTensor) {
    let (dims, wd) = (x.layout().shape(), w.layout().shape());
    assert!(
        dims.num_dims() > 0 && wd.num_elements() == dims[dims.num_dims() - 1],
        "layer norm: weight {wd:?} for input {dims:?}"
    );
}

/// The elements of a dense f32 tensor; the model only passes f32 here, so another dtype is a
/// bug and panics with `what`.
fn f32s<'a>(t: &'a FlexTensor, what: &str) -> &'a [f32] {
    assert_eq!(t.dtype(), DType::F32, "{what}: the CPU kernels take f32");
    t.as_slice::<f32>().expect("dense after contiguous()")
}

/// `t` itself when its elements are one dense run in order, else a dense copy.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

#[cfg(feature = "cube")]
impl SliverOps for burn::backend::Cube {}

/// A 2-D f32 view of a flex tensor, strides and all; `None` for other ranks or dtypes.
fn view(t: &FlexTensor) -> Option<MatRef<'_>> {
    let layout = t.layout();
    let dims = layout.shape();
    if t.dtype() != DType::F32 || dims.num_dims() != 2 {
        return None;
    }
    let strides = layout.strides();
    MatRef::new(t.storage::<f32>(), layout.start_offset(), dims[0], dims[1], strides[0], strides[1])
        .ok()
}

/// The packed GEMM on two f32 matrices; `None` when the kernels do not cover the inputs (other
/// dtypes or ranks), so the caller falls back to flex's own product.
fn flex_matmul(lhs: &FlexTensor, rhs: &FlexTensor) -> Option<FlexTensor> {
    let (a, b) = (view(lhs)?, view(rhs)?);
    if a.cols() != b.rows() {
        return None;
    }
    let (m, n) = (a.rows(), b.cols());
    // The shapes agree (checked above), so the product writes all m x n values.
    Some(new_f32(GEMM, [m, n], |out| {
        sliver_kernels::gemm_uninit(a, b, out).expect("gemm of agreeing shapes")
    }))
}

/// Autodiff versions of operations that are never differentiated themselves (backward passes,
/// the optimiser, the halves of attention): the inner backend's result, no graph recorded.
/// Arguments marked `T` are float tensors, the others pass through as they are.
macro_rules! untracked {
    ($(fn $name:ident($($arg:ident: $kind:tt),*);)*) => {$(
        fn $name($($arg: untracked!(@ty $kind)),*) -> FloatTensor<Self> {
            <Self as AutodiffBackend>::from_inner(B::$name($(untracked!(@val $kind $arg)),*))
        }
    )*};
    (@ty T) => { FloatTensor<Self> };
    (@ty $t:ty) => { $t };
    (@val T $arg:ident) => { $arg.into_primitive() };
    (@val $t:tt $arg:ident) => { $arg };
}

impl<B: SliverOps, C: CheckpointStrategy> SliverOps for Autodiff<B, C> {
    untracked! {
        fn sliver_gelu_backward(x: T, grad: T);
        fn sliver_layer_norm_grad_input(x: T, w: T, dy: T, eps: f32);
        fn sliver_layer_norm_grad_weight(x: T, dy: T, eps: f32);
        fn sliver_adamw(p: T, g: T, m: T, v: T, step: AdamWStep);
        fn sliver_cross_entropy_backward(probs: T, targets: Targets, dloss: T);
        fn sliver_attention_probs(qkv: T, heads: usize);
        fn sliver_attention_apply(qkv: T, probs: T, heads: usize);
        fn sliver_attention_backward(qkv: T, probs: T, dy: T, heads: usize);
    }

    fn sliver_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: SliverOps> Backward<B, 2> for MatmulBackward {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (lhs, rhs) = ops.state;
                let lhs: Option<B::FloatTensorPrimitive> =
                    lhs.map(|id| checkpointer.retrieve_node_output(id));
                let rhs: Option<B::FloatTensorPrimitive> =
                    rhs.map(|id| checkpointer.retrieve_node_output(id));
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |grad| {
                        let rhs = rhs.expect("rhs kept for the lhs gradient");
                        B::sliver_matmul(grad, B::float_transpose(rhs))
                    },
                    |grad| {
                        let lhs = lhs.expect("lhs kept for the rhs gradient");
                        B::sliver_matmul(B::float_transpose(lhs), grad)
                    },
                );
            }
        }

        let lhs_tracked = lhs.is_tracked();
        let rhs_tracked = rhs.is_tracked();
        match MatmulBackward.prepare::<C>([lhs.node(), rhs.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                // Each side's gradient needs the other side's value.
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::sliver_matmul(lhs.into_primitive(), rhs.into_primitive());
                prep.finish((lhs_state, rhs_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::sliver_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn sliver_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: SliverOps> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let x: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::sliver_gelu_backward(x, grad)
                });
            }
        }

        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::sliver_gelu(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sliver_gelu(x.into_primitive())),
        }
    }

    fn sliver_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: SliverOps> Backward<B, 2> for LayerNormBackward {
            type State = (NodeId, NodeId, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (x, w, eps) = ops.state;
                let x: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(x);
                let w: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(w);
                let dy = grads.consume::<B>(&ops.node);
                let [x_node, w_node] = ops.parents;
                if let Some(node) = w_node {
                    let dw = B::sliver_layer_norm_grad_weight(x.clone(), dy.clone(), eps);
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, B::sliver_layer_norm_grad_input(x, w, dy, eps));
                }
            }
        }

        match LayerNormBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&w), eps);
                prep.finish(
                    state,
                    B::sliver_layer_norm(x.into_primitive(), w.into_primitive(), eps),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::sliver_layer_norm(x.into_primitive(), w.into_primitive(), eps))
            }
        }
    }

    fn sliver_cross_entropy(logits: FloatTensor<Self>, targets: Targets) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CrossEntropyBackward;

        impl<B: SliverOps> Backward<B, 1> for CrossEntropyBackward {
            type State = (B::FloatTensorPrimitive, Targets);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (probs, targets) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |dloss| {
                    B::sliver_cross_entropy_backward(probs, targets, dloss)
                });
            }
        }

        // The inner op returns [loss, probs...]; the node's output is the loss alone.
        let split = |out: B::FloatTensorPrimitive| {
            let n = out.shape().num_elements();
            let loss = B::float_slice(out.clone(), &[burn::tensor::Slice::from(0..1)]);
            let probs = B::float_slice(out, &[burn::tensor::Slice::from(1..n)]);
            (loss, probs)
        };
        match CrossEntropyBackward.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (loss, probs) =
                    split(B::sliver_cross_entropy(logits.into_primitive(), targets.clone()));
                prep.finish((probs, targets), loss)
            }
            OpsKind::UnTracked(prep) => {
                let (loss, _) = split(B::sliver_cross_entropy(logits.into_primitive(), targets));
                prep.finish(loss)
            }
        }
    }

    fn sliver_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: SliverOps> Backward<B, 1> for AttentionBackward {
            type State = (NodeId, B::FloatTensorPrimitive, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (qkv, probs, heads) = ops.state;
                let qkv: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(qkv);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::sliver_attention_backward(qkv, probs, grad, heads)
                });
            }
        }

        match AttentionBackward.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let id = prep.checkpoint(&qkv);
                let qkv = qkv.into_primitive();
                let probs = B::sliver_attention_probs(qkv.clone(), heads);
                let y = B::sliver_attention_apply(qkv, probs.clone(), heads);
                prep.finish((id, probs, heads), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::sliver_attention(qkv.into_primitive(), heads))
            }
        }
    }
}

/// Whether [`causal_attention`] and [`layer_norm`] have kernels on `device` (the `flex` CPU
/// backend, with or without autodiff); elsewhere the model uses Burn's own operations.
pub fn fused_supported(device: &Device) -> bool {
    matches!(device.as_dispatch().clone().inner(), DispatchDevice::Flex(_))
}

/// Causal multi-head self-attention of the fused projection `qkv` `[batch, seq, 3 width]`,
/// split into `heads`: the head-merged output `[batch, seq, width]`. Only where
/// [`fused_supported`] says so.
pub fn causal_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_attention(qkv.into_dispatch(), heads))
}

/// Layer normalisation of `x` over its last dimension with weight `w` and no bias. Only where
/// [`fused_supported`] says so.
pub fn layer_norm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_layer_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        eps,
    ))
}

/// One fused AdamW update (see [`SliverOps::sliver_adamw`]): returns `(p, m, v)` updated. Only
/// where [`fused_supported`] says so.
pub fn adamw(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: AdamWStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let n = p.dims()[0];
    let out: Tensor<2> = Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_adamw(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step,
    ));
    let row = |i| out.clone().narrow(0, i, 1).reshape([n]);
    (row(0), row(1), row(2))
}

/// Mean cross-entropy of `logits` `[rows, classes]` against `targets` (one per row, each below
/// `classes`), fused with its softmax; a one-element tensor. Only where [`fused_supported`]
/// says so.
pub fn cross_entropy(logits: Tensor<2>, targets: Targets) -> Tensor<1> {
    let out: Tensor<1> = Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_cross_entropy(
        logits.into_dispatch(),
        targets,
    ));
    // Without autodiff the backend's output still carries the probabilities after the loss.
    out.narrow(0, 0, 1)
}

/// The exact GELU of `x`, element-wise, through the fast path where there is one.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_gelu(x.into_dispatch()))
}

/// `lhs x rhs` for `[m, k]` and `[k, n]` matrices, through the fast path where there is one.
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as SliverOps>::sliver_matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn matmul_and_its_gradients_match_burn() {
        let dev = Device::flex().autodiff();
        let a0 = Tensor::<2>::random([37, 19], Distribution::Default, &dev);
        let b0 = Tensor::<2>::random([19, 45], Distribution::Default, &dev);
        let g = Tensor::<2>::random([37, 45], Distribution::Default, &dev);
        let run = |fast: bool| {
            let a = a0.clone().detach().require_grad();
            let b = b0.clone().detach().require_grad();
            let y = if fast { matmul(a.clone(), b.clone()) } else { a.clone().matmul(b.clone()) };
            let grads = (y.clone() * g.clone().detach()).sum().backward();
            (y.inner(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
        };
        let (y1, ga1, gb1) = run(true);
        let (y2, ga2, gb2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
        ga1.into_data().assert_approx_eq::<f32>(&ga2.into_data(), tol);
        gb1.into_data().assert_approx_eq::<f32>(&gb2.into_data(), tol);
    }

    #[test]
    fn gelu_and_its_gradient_match_burn() {
        let dev = Device::flex().autodiff();
        let x0 = Tensor::<3>::random([3, 70, 50], Distribution::Normal(0.0, 2.0), &dev);
        let g = Tensor::<3>::random([3, 70, 50], Distribution::Default, &dev).detach();
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let y = if fast { gelu(x.clone()) } else { burn::tensor::activation::gelu(x.clone()) };
            let grads = (y.clone() * g.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        let tol = Tolerance::<f32>::absolute(2e-6);
        y1.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
        g1.into_data().assert_approx_eq::<f32>(&g2.into_data(), tol);
        // A strided input (a transposed view) is made dense first.
        let xt = x0.inner().swap_dims(1, 2);
        let fast = gelu(xt.clone());
        fast.into_data()
            .assert_approx_eq::<f32>(&burn::tensor::activation::gelu(xt).into_data(), tol);
    }

    #[test]
    fn attention_and_its_gradient_match_burn() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        let dev = Device::flex().autodiff();
        assert!(fused_supported(&dev) && fused_supported(&Device::flex()));
        let (b, t, h, hd) = (3, 11, 2, 6);
        let d = h * hd;
        let qkv0 = Tensor::<3>::random([b, t, 3 * d], Distribution::Normal(0.0, 1.0), &dev);
        let g = Tensor::<3>::random([b, t, d], Distribution::Default, &dev).detach();
        let run = |fast: bool| {
            let qkv = qkv0.clone().detach().require_grad();
            let y = if fast {
                causal_attention(qkv.clone(), h)
            } else {
                let heads = |i: usize| {
                    qkv.clone().narrow(2, i * d, d).reshape([b, t, h, hd]).swap_dims(1, 2)
                };
                let options =
                    AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
                attention(heads(0), heads(1), heads(2), None, None, options)
                    .swap_dims(1, 2)
                    .reshape([b, t, d])
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (y.inner(), qkv.grad(&grads).unwrap())
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
        g1.into_data().assert_approx_eq::<f32>(&g2.into_data(), tol);
    }

    #[test]
    fn layer_norm_and_its_gradients_match_burn() {
        let dev = Device::flex().autodiff();
        let x0 = Tensor::<3>::random([3, 7, 20], Distribution::Normal(0.5, 2.0), &dev);
        let w0 = Tensor::<1>::random([20], Distribution::Normal(1.0, 0.3), &dev);
        let g = Tensor::<3>::random([3, 7, 20], Distribution::Default, &dev).detach();
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let w = w0.clone().detach().require_grad();
            let y = if fast {
                layer_norm(x.clone(), w.clone(), 1e-5)
            } else {
                burn::tensor::module::layer_norm(x.clone(), w.clone(), None, 1e-5)
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let (y1, gx1, gw1) = run(true);
        let (y2, gx2, gw2) = run(false);
        let tol = Tolerance::<f32>::absolute(2e-5);
        y1.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
        gx1.into_data().assert_approx_eq::<f32>(&gx2.into_data(), tol);
        gw1.into_data().assert_approx_eq::<f32>(&gw2.into_data(), tol);
    }

    #[test]
    fn fused_adamw_matches_the_tensor_expressions() {
        let dev = Device::flex();
        let r = |n: usize, lo: f64, hi: f64| {
            Tensor::<1>::random([n], Distribution::Uniform(lo, hi), &dev)
        };
        let n = 40_000; // several parallel chunks
        let (p, g, m, v) = (r(n, -1.0, 1.0), r(n, -3.0, 3.0), r(n, -0.1, 0.1), r(n, 0.0, 0.01));
        for (grad_scale, decay) in [(1.0f64, 1.0f64), (0.37, 1.0 - 1e-3 * 0.1)] {
            let (b1, b2, eps, bc2, lr_t) = (0.9f64, 0.99f64, 1e-8f64, 0.3f64, 2e-3f64);
            let step = AdamWStep {
                grad_scale: grad_scale as f32,
                beta1: b1 as f32,
                one_minus_beta1: (1.0 - b1) as f32,
                beta2: b2 as f32,
                one_minus_beta2: (1.0 - b2) as f32,
                decay: decay as f32,
                bias_correction2_sqrt: bc2 as f32,
                eps: eps as f32,
                step_size: lr_t as f32,
            };
            let (p1, m1, v1) = adamw(p.clone(), g.clone(), m.clone(), v.clone(), step);
            let g2 = if grad_scale < 1.0 { g.clone().mul_scalar(grad_scale) } else { g.clone() };
            let m2 = m.clone().mul_scalar(b1) + g2.clone().mul_scalar(1.0 - b1);
            let v2 = v.clone().mul_scalar(b2) + g2.clone().square().mul_scalar(1.0 - b2);
            let pd = if decay != 1.0 { p.clone().mul_scalar(decay) } else { p.clone() };
            let denom = v2.clone().sqrt().div_scalar(bc2).add_scalar(eps);
            let p2 = pd - m2.clone().div(denom).mul_scalar(lr_t);
            let tol = Tolerance::<f32>::relative(1e-6);
            m1.into_data().assert_approx_eq::<f32>(&m2.into_data(), tol);
            v1.into_data().assert_approx_eq::<f32>(&v2.into_data(), tol);
            p1.into_data().assert_approx_eq::<f32>(&p2.into_data(), tol);
        }
    }

    #[test]
    fn cross_entropy_and_its_gradient_match_burn() {
        use burn::tensor::{Int, TensorData};
        let dev = Device::flex().autodiff();
        let (rows, v) = (50, 23);
        let x0 = Tensor::<2>::random([rows, v], Distribution::Normal(0.0, 3.0), &dev);
        let ids: Vec<i64> = (0..rows as i64).map(|r| (r * 7) % v as i64).collect();
        let targets: Targets = ids.iter().map(|&i| i as u32).collect::<Vec<_>>().into();
        let burn_loss = |x: Tensor<2>| {
            let t = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [rows, 1]), &dev);
            burn::tensor::activation::log_softmax(x, 1).gather(1, t).mean().neg()
        };
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let loss =
                if fast { cross_entropy(x.clone(), targets.clone()) } else { burn_loss(x.clone()) };
            let grads = loss.clone().mul_scalar(3.0).backward();
            (loss.inner(), x.grad(&grads).unwrap())
        };
        let (l1, g1) = run(true);
        let (l2, g2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        l1.into_data().assert_approx_eq::<f32>(&l2.into_data(), tol);
        g1.into_data().assert_approx_eq::<f32>(&g2.into_data(), tol);
        // Without autodiff (evaluation) the result is the loss alone.
        let plain = cross_entropy(x0.inner(), targets);
        assert_eq!(plain.dims(), [1]);
    }

    #[test]
    fn transposed_and_narrowed_inputs_take_the_fast_path_correctly() {
        let dev = Device::flex();
        let a = Tensor::<2>::random([30, 50], Distribution::Default, &dev);
        let b = Tensor::<2>::random([40, 30], Distribution::Default, &dev);
        let a_view = a.clone().narrow(1, 5, 20).transpose(); // [20, 30], strided
        let b_view = b.clone().transpose(); // [30, 40]
        let fast = matmul(a_view.clone(), b_view.clone());
        let burn = a_view.matmul(b_view);
        fast.into_data().assert_approx_eq::<f32>(&burn.into_data(), Tolerance::absolute(1e-5));
    }
}
