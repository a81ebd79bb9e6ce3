//! Data parallelism on one device: a batch's rows split over threads, each backpropagating its
//! rows' share of the loss through its own copy of the trained parameters, the gradients summed in
//! row order. The result is the unsplit batch's gradient up to the order of float additions, as
//! long as the loss is a mean over rows (the flow-matching loss is).

use std::ops::Range;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::params::{assign_flat, flat_values, gradients};

/// `[start, end)` blocks of `n` rows for `parts` workers (at most `n`), sizes differing by at
/// most one.
pub fn row_blocks(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts)..((i + 1) * n / parts))
        .collect()
}

/// Flat gradients `[n_i]` (in [`crate::params::flat_values`] order), element by element `a + b`;
/// `None` is the empty sum.
pub fn add_grads<B: Backend>(
    sum: Option<Vec<Tensor<B, 1>>>,
    grads: Vec<Tensor<B, 1>>,
) -> Option<Vec<Tensor<B, 1>>> {
    Some(match sum {
        None => grads,
        Some(acc) => acc.into_iter().zip(grads).map(|(a, g)| a + g).collect(),
    })
}

/// What [`split_gradients`] returns: the summed flat gradients and each block's share of the
/// rows with what its loss function reported.
pub struct Split<B: AutodiffBackend, T> {
    /// Flat gradients `[n_i]` of Σ share · loss, one per parameter.
    pub grads: Vec<Tensor<B::InnerBackend, 1>>,
    /// Per block, in row order: its share of the rows and what its loss function reported.
    pub blocks: Vec<(f64, T)>,
}

/// The gradient wrt `module`'s parameters of Σ_blocks share · loss(block), where the `rows` rows
/// are split into `workers` blocks ([`row_blocks`]), share = block rows / `rows`, and
/// `loss(copy, block)` returns the mean loss `[1]` of those rows (and anything to report) computed
/// with `copy`, the thread's copy of `module` (the same values as fresh leaves, so the graphs stay
/// apart). Each block runs on its own thread; `meanwhile` runs on the calling thread at the same
/// time. A worker's panic is resumed on the calling thread.
pub fn split_gradients<B, M, T, E, R>(
    module: &M,
    rows: usize,
    workers: usize,
    loss: impl Fn(&M, Range<usize>) -> Result<(Tensor<B, 1>, T), E> + Sync,
    meanwhile: impl FnOnce() -> R,
) -> (Result<Split<B, T>, E>, R)
where
    B: AutodiffBackend,
    M: Module<B> + Sync,
    T: Send,
    E: Send,
{
    let loss = &loss;
    std::thread::scope(|scope| {
        let handles: Vec<_> = row_blocks(rows, workers)
            .into_iter()
            .map(|block| {
                let share = block.len() as f64 / rows.max(1) as f64;
                let copy = assign_flat(module.clone(), flat_values(module));
                scope.spawn(move || -> Result<_, E> {
                    let (value, report) = loss(&copy, block)?;
                    Ok((gradients(&copy, value * share), share, report))
                })
            })
            .collect();
        let other = meanwhile();
        let mut sum = None;
        let mut blocks = Vec::new();
        let mut failed = None;
        for handle in handles {
            match handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            {
                Ok((grads, share, report)) => {
                    sum = add_grads(sum, grads);
                    blocks.push((share, report));
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        let split = match failed {
            Some(e) => Err(e),
            None => Ok(Split {
                grads: sum.unwrap_or_default(),
                blocks,
            }),
        };
        (split, other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type AB = Autodiff<Flex>;

    #[test]
    fn blocks_cover_the_rows_in_order_with_sizes_a_row_apart() {
        assert_eq!(row_blocks(5, 2), vec![0..2, 2..5]);
        assert_eq!(row_blocks(3, 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(row_blocks(4, 0), vec![0..4]);
        assert_eq!(row_blocks(0, 3), vec![0..0]);
    }

    #[test]
    fn a_workers_error_is_returned_and_meanwhile_still_runs() {
        let device = Default::default();
        let linear: Linear<AB> = LinearConfig::new(2, 1).init(&device);
        let (result, other) = split_gradients(
            &linear,
            4,
            2,
            |_, rows| -> Result<(Tensor<AB, 1>, ()), String> { Err(format!("rows {rows:?}")) },
            || 7,
        );
        assert_eq!(result.err().as_deref(), Some("rows 0..2"));
        assert_eq!(other, 7);
    }

    #[test]
    #[should_panic(expected = "worker panicked")]
    fn a_workers_panic_reaches_the_caller() {
        let device = Default::default();
        let linear: Linear<AB> = LinearConfig::new(2, 1).init(&device);
        let _ = split_gradients(
            &linear,
            2,
            2,
            |_, _| -> Result<(Tensor<AB, 1>, ()), ()> { panic!("worker panicked") },
            || (),
        );
    }
}
