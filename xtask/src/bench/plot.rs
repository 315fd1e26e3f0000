//! `--plot`: one bar chart per measured quantity, the three variants side by side.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{Report, Variant};

const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xff, 0x7f, 0x0e),
];

pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let panels: Vec<(String, &'static str, [f64; 3])> = report
        .cases
        .iter()
        .flat_map(|case| {
            case.metrics.iter().map(move |metric| {
                (
                    format!("{}: {} ({})", case.title, metric.name, case.s3_server),
                    metric.unit,
                    metric.median,
                )
            })
        })
        .collect();
    let height = 260 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    for ((title, unit, values), area) in panels
        .iter()
        .zip(root.split_evenly((panels.len().max(1), 1)))
    {
        let top = values.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.2;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..3.0, 0.0..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(0)
            .y_desc(*unit)
            .draw()
            .map_err(plot_error)?;
        for (i, variant) in Variant::ALL.iter().enumerate() {
            let x = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.2, 0.0), (x + 0.8, values[i])],
                    COLORS[i].filled(),
                )))
                .map_err(plot_error)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} {:.1}", variant.label(), values[i]),
                    // Text hangs below its anchor: anchor it above the bar.
                    (x + 0.22, values[i] + top * 0.1),
                    ("sans-serif", 13),
                )))
                .map_err(plot_error)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::error::Error + Send + Sync>(err: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {err}")
}
