//! Means with standard errors.

/// A mean and its standard error (the sample standard deviation over √n; 0 for one value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanSe {
    /// The mean.
    pub mean: f64,
    /// Its standard error.
    pub se: f64,
    /// How many values.
    pub n: usize,
}

impl MeanSe {
    /// Of `values` (NaN mean for none).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                se: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let se = if n > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        } else {
            0.0
        };
        Self { mean, se, n }
    }
}

impl std::fmt::Display for MeanSe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.mean, self.se)
    }
}
