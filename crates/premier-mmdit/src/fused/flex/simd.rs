//! Vector code for the Flex kernels without `target-cpu=native`: [`vectorized`] runs a closure
//! compiled for AVX-512 or AVX2 + FMA when the CPU has them (detected at run time), and the
//! reductions below keep [`LANES`] partial sums, which the compiler can hold in one vector
//! register (a plain `sum += x` loop stays scalar: floats may not be reassociated).
//!
//! The partial sums are combined in one fixed order, and no multiply-add is fused (Rust does not
//! contract `a * b + c`), so a kernel gives the same bits on every instruction set.

use super::Real;

/// Partial sums per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

/// Runs `f` with the widest vector instructions this CPU has. Call it inside each parallel task
/// (a rayon worker does not inherit the caller's target features), with a closure marked
/// `#[inline(always)]` whose callees are too (the helpers here are): code that is not inlined
/// into the target-feature function is compiled for the baseline instruction set.
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Σ f(i) for i in 0..n, in [`LANES`] partial sums combined pairwise.
#[inline(always)]
pub(super) fn sum_by<T: Real>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let whole = n - n % LANES;
    for i in (0..whole).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    for (l, i) in (whole..n).enumerate() {
        acc[l] += f(i);
    }
    combine(acc, |a, b| a + b)
}

/// xs[i] ← f(xs[i]), returning Σ f(xs[i]) summed as [`sum`] would sum the new xs (the same
/// bits), in the one pass.
#[inline(always)]
pub(super) fn map_sum<T: Real>(xs: &mut [T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let whole = xs.len() - xs.len() % LANES;
    let (body, tail) = xs.split_at_mut(whole);
    for chunk in body.chunks_exact_mut(LANES) {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *x = f(*x);
            *a += *x;
        }
    }
    for (a, x) in acc.iter_mut().zip(tail) {
        *x = f(*x);
        *a += *x;
    }
    combine(acc, |a, b| a + b)
}

/// Σ xs.
#[inline(always)]
pub(super) fn sum<T: Real>(xs: &[T]) -> T {
    sum_by(xs.len(), |i| xs[i])
}

/// Σ a ∘ b (a and b as long as each other).
#[inline(always)]
pub(super) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    sum_by(a.len(), |i| a[i] * b[i])
}

/// max(start, max xs); NaN in xs is skipped, as a `>` comparison skips it.
#[inline(always)]
pub(super) fn max<T: Real>(xs: &[T], start: T) -> T {
    let mut acc = [start; LANES];
    let whole = xs.len() - xs.len() % LANES;
    let bigger = |a: T, b: T| if b > a { b } else { a };
    for chunk in xs[..whole].chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = bigger(*a, x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(&xs[whole..]) {
        *a = bigger(*a, x);
    }
    combine(acc, bigger)
}

/// Folds the lanes pairwise: (0+8, 1+9, …), then (0+4, …), down to one.
#[inline(always)]
fn combine<T: Real>(mut acc: [T; LANES], op: impl Fn(T, T) -> T) -> T {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] = op(acc[l], acc[l + width]);
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_plain_loops_at_every_length() {
        for n in [0, 1, 5, 15, 16, 17, 33, 100] {
            let xs: Vec<f64> = (0..n).map(|i| ((i * 7919) % 23) as f64 - 11.0).collect();
            let ys: Vec<f64> = (0..n).map(|i| ((i * 104729) % 17) as f64 * 0.5).collect();
            // Small integers and halves: every order gives the exact result.
            assert_eq!(vectorized(|| sum(&xs)), xs.iter().sum::<f64>(), "sum {n}");
            let plain_dot: f64 = xs.iter().zip(&ys).map(|(a, b)| a * b).sum();
            assert_eq!(vectorized(|| dot(&xs, &ys)), plain_dot, "dot {n}");
            let mut mapped = xs.clone();
            let mapped_sum = vectorized(|| map_sum(&mut mapped, |x| x * 0.5 + 1.0));
            let expected: Vec<f64> = xs.iter().map(|x| x * 0.5 + 1.0).collect();
            assert_eq!(mapped, expected, "map_sum values {n}");
            assert_eq!(mapped_sum, sum(&expected), "map_sum {n}");
            let plain_max = xs.iter().copied().fold(-1e9, f64::max);
            assert_eq!(vectorized(|| max(&xs, -1e9)), plain_max, "max {n}");
        }
        assert_eq!(max(&[f32::NAN, 2.0, f32::NAN], f32::NEG_INFINITY), 2.0);
    }

    /// Sum, dot, max and the f32 exp of a softmax row: bits per instruction set.
    #[inline(always)]
    fn kernel_bits(xs: &[f32]) -> Vec<u32> {
        let mut e: Vec<f32> = xs.iter().map(|&x| super::super::exp_f32(x - 3.0)).collect();
        e.extend([sum(xs), dot(xs, xs), max(xs, f32::NEG_INFINITY)]);
        e.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1009) as f32 * 0.011 - 5.0)
            .collect();
        let baseline = kernel_bits(&xs);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: checked above.
                assert_eq!(unsafe { with_avx2(|| kernel_bits(&xs)) }, baseline, "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked above.
                assert_eq!(
                    unsafe { with_avx512(|| kernel_bits(&xs)) },
                    baseline,
                    "AVX-512"
                );
            }
        }
    }
}
