//! Numeric layers and the Prospective Learning solver of plflow.
//!
//! This crate knows nothing about pipelines or files: it holds row-major `f32` tensors whose
//! bytes are counted by a process-wide [`ledger`], dense layers, their activations, the
//! regularised least-squares solve at the heart of Prospective Learning (PL), and the update
//! rule that turns a solve into new weights. The engine composes these into training runs.
//!
//! Crate map (one concept per module):
//! - [`ledger`]: counts the bytes held by tracked buffers, with a high-water mark.
//! - [`tensor`]: [`Matrix`], a ledger-tracked row-major `f32` matrix with faer views.
//! - [`bf16`]: `bf16` rounding and a ledger-tracked `bf16` matrix, for state kept at half size.
//! - [`activation`]: ELU and ReLU with clipping, and their derivatives recovered from the output.
//! - [`dense`]: a fully connected layer (weights, bias, forward pass); over the rows of NHWC
//!   feature maps it is also the pointwise (1x1) convolution.
//! - [`layer`]: the [`layer::Op`] trait every kind of layer implements (forward, error below,
//!   PL solve, gradients, shapes, scratch), and [`layer::Layer`]: an op with its activation.
//! - [`depthwise`]: depthwise `k x k` convolution, its transposed convolution and its
//!   per-channel PL solve.
//! - [`pool`]: global average pooling.
//! - [`init`]: seeded weight initialisation.
//! - [`solve`]: `dTheta = -alpha (X^T X + lambda I)^-1 X^T e` by Cholesky, primal or dual.
//! - [`sparse`]: sparse connectivity masks and their initial weights (SPEC section 3).
//! - [`update`]: momentum and spectral-norm clamp applied to a layer after its solve.
//! - [`network`]: a chain of layers and inference.
//! - [`pl`]: the Prospective Learning trainer: per-layer state and the training step.
//! - [`backprop`]: the baselines: SGD with momentum, Adam and AdamW on the same networks.
//! - [`admm`]: dlADMM (Wang et al. 2019): block updates of weights, activations and the
//!   output multiplier, for MLPs of ReLU layers.
//! - [`state`]: a trainer's whole state as named parts, for checkpoints and resumed runs.
//! - [`reduce`]: parallel sums over samples that give the same bits on any thread count.
//! - [`shard`]: sums over the shards of a distributed batch, the same bits on any number of
//!   workers, and the [`shard::Reducer`] that exchanges them.

/// `fn $name(args) -> ret` that runs `$body` (an `#[inline(always)]` fn of the same
/// arguments) compiled for the widest vectors the CPU has, chosen at run time: the crate is
/// built for the baseline x86-64 (four `f32` lanes), and these loops run 8 or 16 wide with
/// AVX2 or AVX-512. A loop written so that every lane does the scalar arithmetic in the same
/// order (no fused multiply-add is formed) gives the same bits on every CPU.
macro_rules! widest_vectors {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has AVX-512F and BW, the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, the only feature `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Clear the upper halves of this thread's vector registers (`vzeroupper`) where the CPU has
/// AVX. faer's products end in assembly kernels that leave them dirty, and legacy-SSE code
/// run after them on the same thread then pays a false dependency on every instruction: the
/// cross-entropy's 5,120 `exp` after the forward's products took 1.5 ms instead of 0.07 ms.
/// Called before the scalar loops that follow products on the calling thread.
pub(crate) fn clean_vector_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX, the only feature `zero_upper` is compiled for.
            unsafe { zero_upper() }
        }
    }
}

pub mod activation;
pub mod admm;
pub mod backprop;
pub mod bf16;
pub mod concat;
pub mod dense;
pub mod depthwise;
pub mod error;
pub mod ff;
pub mod init;
pub mod layer;
pub mod ledger;
pub mod muon;
pub mod network;
pub mod noprop;
pub mod pl;
pub mod pool;
pub mod readout;
pub mod reduce;
pub mod shard;
pub mod solve;
pub mod sparse;
pub mod state;
pub mod tensor;
pub mod update;

pub use error::OpsError;
pub use tensor::Matrix;

/// Threads of rayon's global pool: the workers of every parallel loop and product, for
/// memory estimates of per-thread buffers.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Make the calling thread (the process's main thread, before any parallel work) worker 0 of
/// rayon's global pool, beside `cores - 1` others. Every parallel product and loop of a
/// training step is then forked from a worker, which runs its own share and hands the rest
/// to the other worker's queue, instead of being sent to a pool of `cores` threads while the
/// caller sleeps: the MNIST epochs took 12-17% less time (PL 1.61-1.72 -> 1.34-1.36 s, Adam
/// 0.95-0.97 -> 0.84 s, SGD 0.98 -> 0.82 s) with a sixth of the context switches, and one
/// thread fewer keeps its product buffers resident. Does nothing when the pool exists already
/// (tests, other embedders); `RAYON_NUM_THREADS` still sets the count.
pub fn main_thread_in_pool() {
    // An error only says the global pool was built before; it keeps its threads.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

/// The parallelism faer uses for large products: all threads of rayon's global pool.
pub(crate) fn par() -> faer::Par {
    faer::Par::rayon(0)
}
