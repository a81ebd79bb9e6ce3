//! The FLUX sampling schedule (BFL `sampling.py get_schedule`).

/// `mu` of FLUX's time shift for `image_seq_len` packed tokens: the line through (256, 0.5) and
/// (4096, 1.15).
pub fn time_shift_mu(image_seq_len: usize) -> f64 {
    let (x1, y1, x2, y2) = (256.0, 0.5, 4096.0, 1.15);
    let m = (y2 - y1) / (x2 - x1);
    let b = y1 - m * x1;
    m * image_seq_len as f64 + b
}

/// `num_steps + 1` flow times from 1 (noise) to 0 (image). With `shift` (FLUX.1-dev) each t is
/// mapped to `e^mu / (e^mu + 1/t - 1)`, mu from [`time_shift_mu`]; schnell uses `shift = false`.
pub fn schedule(num_steps: usize, image_seq_len: usize, shift: bool) -> Vec<f32> {
    let mu = time_shift_mu(image_seq_len).exp();
    (0..=num_steps)
        .map(|i| {
            // torch.linspace(1, 0, n + 1) in f32.
            let t = (1.0 - i as f64 / num_steps.max(1) as f64) as f32;
            if !shift || t == 0.0 {
                return t;
            }
            let t = t as f64;
            (mu / (mu + (1.0 / t - 1.0))) as f32
        })
        .collect()
}
