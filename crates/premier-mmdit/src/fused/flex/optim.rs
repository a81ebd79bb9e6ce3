//! Prodigy's elementwise passes for `Flex`: the three moment updates and both sums in one
//! vectorised pass over each parameter, and the parameter update in a second, in parallel
//! chunks, where the composite makes a dozen single-threaded passes (burn-flex runs elementwise
//! ops below 4M elements on one core) and allocates most of them.
//!
//! Each element sees the composite's operations in the composite's order, so the moments and the
//! parameters have its bits; the sums add [`CHUNK`]-sized partial sums (in the float type) in
//! f64, in chunk order, which differs from burn-flex's order by rounding only.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::simd::{sum_by, vectorized};
use super::{tensor, Real};
use crate::fused::{ProdigyCoefs, ProdigyMoments, ProdigySums, ProdigyUpdate};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// x's values to overwrite: x itself when it owns its buffer alone, else a copy.
fn owned<T: Real>(mut x: FlexTensor) -> FlexTensor {
    if T::view_mut(&mut x).is_some() {
        return x;
    }
    let x = x.to_contiguous();
    tensor(T::view(&x).to_vec(), x.shape())
}

#[inline(always)]
fn abs<T: Real>(x: T) -> T {
    if x < T::ZERO {
        T::ZERO - x
    } else {
        x
    }
}

/// See [`crate::FluxOps::flux_prodigy_moments`].
pub(super) fn moments<T: Real>(
    p: &FlexTensor,
    g: &FlexTensor,
    p0: Option<&FlexTensor>,
    moments: ProdigyMoments<burn::backend::Flex>,
    c: ProdigyCoefs,
) -> (ProdigyMoments<burn::backend::Flex>, ProdigySums) {
    let n = p.shape().num_elements();
    for (name, x) in [("g", g), ("exp_avg", &moments.exp_avg)] {
        assert_eq!(x.shape().num_elements(), n, "fused Prodigy: {name} vs p");
    }
    let (p, g) = (p.to_contiguous(), g.to_contiguous());
    let p0 = p0.map(|p0| p0.to_contiguous());
    let (ps, gs) = (T::view(&p), T::view(&g));
    let p0s = p0.as_ref().map(|p0| T::view(p0));
    let [mut exp_avg, mut exp_avg_sq, mut s] =
        [moments.exp_avg, moments.exp_avg_sq, moments.s].map(owned::<T>);
    let [beta1, avg, beta2, avg_sq, beta3, s_coef] =
        [c.beta1, c.avg, c.beta2, c.avg_sq, c.beta3, c.s_coef].map(T::of);
    let update_avg = c.beta1 > 0.0;
    let partial: Vec<(T, T)> = {
        let [m, v, sv] =
            [&mut exp_avg, &mut exp_avg_sq, &mut s].map(|x| T::view_mut(x).expect("owned above"));
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(sv.par_chunks_mut(CHUNK))
            .enumerate()
            .map(|(i, ((m, v), sv))| {
                let range = i * CHUNK..i * CHUNK + m.len();
                let (p, g) = (&ps[range.clone()], &gs[range.clone()]);
                let p0 = p0s.map(|p0| &p0[range]);
                vectorized(
                    #[inline(always)]
                    || {
                        for (((m, v), s), &g) in m.iter_mut().zip(v).zip(sv.iter_mut()).zip(g) {
                            if update_avg {
                                *m = *m * beta1 + g * avg;
                            }
                            *v = *v * beta2 + (g * avg_sq) * g;
                            *s = *s * beta3 + g * s_coef;
                        }
                        let dot = match p0 {
                            Some(p0) => sum_by(g.len(), |j| g[j] * (p0[j] - p[j])),
                            None => sum_by(g.len(), |j| g[j] * (T::ZERO - p[j])),
                        };
                        (dot, sum_by(sv.len(), |j| abs(sv[j])))
                    },
                )
            })
            .collect()
    };
    let widen = |x: T| x.elem::<f64>();
    let sums = ProdigySums {
        g_dot_delta: partial.iter().map(|&(d, _)| widen(d)).sum(),
        s_abs: partial.iter().map(|&(_, a)| widen(a)).sum(),
    };
    (
        ProdigyMoments {
            exp_avg,
            exp_avg_sq,
            s,
        },
        sums,
    )
}

/// See [`crate::FluxOps::flux_prodigy_update`]. Written over p when p owns its buffer alone.
pub(super) fn update<T: Real>(
    p: FlexTensor,
    direction: &FlexTensor,
    exp_avg_sq: &FlexTensor,
    u: ProdigyUpdate,
) -> FlexTensor {
    let n = p.shape().num_elements();
    for (name, x) in [("direction", direction), ("exp_avg_sq", exp_avg_sq)] {
        assert_eq!(x.shape().num_elements(), n, "fused Prodigy: {name} vs p");
    }
    let mut p = owned::<T>(p);
    let (direction, exp_avg_sq) = (direction.to_contiguous(), exp_avg_sq.to_contiguous());
    let (ds, vs) = (T::view(&direction), T::view(&exp_avg_sq));
    let [decay, step, eps] = [u.decay, u.step, u.eps].map(T::of);
    let decays = u.decay != 0.0;
    T::view_mut(&mut p)
        .expect("owned above")
        .par_chunks_mut(CHUNK)
        .zip(ds.par_chunks(CHUNK).zip(vs.par_chunks(CHUNK)))
        .for_each(|(p, (d, v))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((p, &d), &v) in p.iter_mut().zip(d).zip(v) {
                        if decays {
                            *p = *p + *p * decay;
                        }
                        *p = *p + (d / (v.sqrt() + eps)) * step;
                    }
                },
            )
        });
    p
}
