//! The ns/packet bar chart (PNG), because people compare bars faster than numbers.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::PathResult;

/// A font Debian ships (package fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Horizontal bars of median ns/packet, the floor first.
pub fn draw(path: &Path, floor: &PathResult, paths: &[PathResult]) -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let all: Vec<&PathResult> = std::iter::once(floor).chain(paths).collect();
    let max = all.iter().map(|p| p.ns.max).fold(0.0, f64::max) * 1.6;
    let n = all.len() as f64;
    let root = BitMapBackend::new(path, (1100, 90 + 36 * all.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xvs: ns per packet (BPF_PROG_TEST_RUN, repeat = 1; median, whiskers min..max)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..max, 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("ns / packet")
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, p) in all.iter().enumerate() {
        // The floor on top, then the paths downwards.
        let y = n - 1.0 - i as f64;
        let color = if i == 0 {
            RGBColor(150, 150, 150)
        } else {
            RGBColor(40, 110, 190)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.2), (p.ns.median, y + 0.8)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(p.ns.min, y + 0.5), (p.ns.max, y + 0.5)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.1} ns  {}", p.ns.median, p.name),
            (p.ns.max + max * 0.01, y + 0.65),
            ("sans-serif", 14),
        )))?;
    }
    root.present()?;
    Ok(())
}
