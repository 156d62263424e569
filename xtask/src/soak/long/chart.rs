//! The chart of the long run in RELIABILITY.md: per framework, each
//! process's resident memory (left) and open file descriptors (right) over
//! the run. SVG through plotters, as the benchmark chart.

use std::path::Path;

use plotters::prelude::*;

use super::{LongRun, Series};

const COLORS: [RGBColor; 6] = [
    RGBColor(0x7c, 0x3a, 0xed),
    RGBColor(0x25, 0x63, 0xeb),
    RGBColor(0x05, 0x96, 0x69),
    RGBColor(0xea, 0x58, 0x0c),
    RGBColor(0xdb, 0x27, 0x77),
    RGBColor(0x52, 0x52, 0x52),
];

const ROW: u32 = 340;

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) fn render(path: &Path, runs: &[LongRun]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    draw(path, runs).map_err(|e| format!("chart {}: {e}", path.display()))
}

fn draw(path: &Path, runs: &[LongRun]) -> DrawResult {
    let rows = runs.len().max(1);
    let root = SVGBackend::new(path, (1000, ROW * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (run, row) in runs.iter().zip(root.split_evenly((rows, 1))) {
        let (left, right) = row.split_horizontally(560);
        panel(
            &left,
            &format!("{}: resident memory (VmRSS)", run.framework),
            "MiB",
            &run.series,
            |p| p.rss_kib as f64 / 1024.0,
        )?;
        panel(
            &right,
            &format!("{}: open file descriptors", run.framework),
            "fds",
            &run.series,
            |p| p.fds as f64,
        )?;
    }
    root.present()?;
    Ok(())
}

fn minutes(d: std::time::Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

fn panel(
    area: &Area<'_>,
    caption: &str,
    unit: &str,
    series: &[Series],
    value: impl Fn(&super::Point) -> f64,
) -> DrawResult {
    let end = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| minutes(p.at)))
        .fold(0.1, f64::max);
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(&value))
        .fold(1.0, f64::max)
        * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .x_desc("minutes")
        .y_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            // One path per series (plotters' LineSeries is a feature left off).
            .draw_series(std::iter::once(PathElement::new(
                s.points
                    .iter()
                    .map(|p| (minutes(p.at), value(p)))
                    .collect::<Vec<_>>(),
                color.stroke_width(2),
            )))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}
