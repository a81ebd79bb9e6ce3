pub use premier_mmdit as mmdit;
