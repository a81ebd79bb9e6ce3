//! Fresh parameters drawn from a seed, the same whichever threads draw others at the time.

use std::sync::Mutex;

use burn::prelude::*;

/// Held while the backend's RNG is seeded and drawn from: the RNG is shared by the whole
/// process, so two runs starting on two threads would otherwise interleave their draws.
static DRAWING: Mutex<()> = Mutex::new(());

/// Seeds the backend's RNG with `seed` and runs `draw` (which initialises parameters from it)
/// while no other [`seeded`] call runs: its result depends on `seed` alone.
pub fn seeded<B: Backend, T>(device: &B::Device, seed: u64, draw: impl FnOnce() -> T) -> T {
    // A thread that panicked while drawing left nothing half-done that matters here.
    let _guard = DRAWING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    B::seed(device, seed);
    draw()
}
