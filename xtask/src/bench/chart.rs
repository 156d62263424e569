//! The chart in BENCHMARKS.md: throughput ON vs OFF per framework (bars at
//! the median, whiskers spanning the rounds), and the replay hop's latency.
//! SVG through plotters, so no font or system library is needed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ab::AbResult;
use super::hop::HopRow;
use super::wrk::Rounds;
use super::{median, min_max};

const ON: RGBColor = RGBColor(0x7c, 0x3a, 0xed);
const OFF: RGBColor = RGBColor(0xa3, 0xa3, 0xa3);
const P50: RGBColor = RGBColor(0x25, 0x63, 0xeb);
const P99: RGBColor = RGBColor(0x93, 0xc5, 0xfd);

pub(crate) fn render(
    path: &Path,
    adapters: &[AbResult],
    hop: Option<&[HopRow]>,
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    draw(path, adapters, hop).map_err(|e| format!("chart {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, adapters: &[AbResult], hop: Option<&[HopRow]>) -> DrawResult {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = match hop {
        Some(_) => root.split_horizontally(640),
        None => root.split_horizontally(1000),
    };
    throughput(&left, adapters)?;
    if let Some(rows) = hop {
        latency(&right, rows)?;
    }
    root.present()?;
    Ok(())
}

/// Integer x positions labelled with `names` (the axis runs -0.5..n-0.5).
fn label_for(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn centred_above() -> TextStyle<'static> {
    TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom))
}

fn throughput(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    adapters: &[AbResult],
) -> DrawResult {
    let names: Vec<String> = adapters.iter().map(|a| a.framework.clone()).collect();
    let n = adapters.len().max(1) as f64;
    let top = adapters
        .iter()
        .flat_map(|a| a.on_rps().into_iter().chain(a.off_rps()))
        .fold(1.0_f64, f64::max)
        * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput, middleware ON vs OFF (median, whiskers: rounds)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n - 0.5), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(adapters.len().max(1))
        .x_label_formatter(&|x| label_for(&names, *x))
        .y_desc("requests / s")
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;

    for (side, color, offset, label) in [(true, ON, -0.2, "ON"), (false, OFF, 0.2, "OFF")] {
        let bars = adapters.iter().enumerate().map(|(i, a)| {
            let rps = if side { a.on_rps() } else { a.off_rps() };
            let x = i as f64 + offset;
            Rectangle::new([(x - 0.18, 0.0), (x + 0.18, median(&rps))], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let whiskers = adapters.iter().enumerate().flat_map(|(i, a)| {
            let rps = if side { a.on_rps() } else { a.off_rps() };
            let (lo, hi) = min_max(&rps);
            let x = i as f64 + offset;
            [
                PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x - 0.05, lo), (x + 0.05, lo)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x - 0.05, hi), (x + 0.05, hi)], BLACK.stroke_width(1)),
            ]
        });
        chart.draw_series(whiskers)?;
    }
    let ratios = adapters.iter().enumerate().map(|(i, a)| {
        let hi = a
            .on_rps()
            .into_iter()
            .chain(a.off_rps())
            .fold(0.0_f64, f64::max);
        Text::new(
            format!("ON/OFF {:.3}", a.ratio()),
            (i as f64, hi + top * 0.02),
            centred_above(),
        )
    });
    chart.draw_series(ratios)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn latency(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[HopRow],
) -> DrawResult {
    let names: Vec<String> = rows.iter().map(|r| r.name.to_owned()).collect();
    let n = rows.len().max(1) as f64;
    let top = rows.iter().map(HopRow::single_p99).fold(1.0, f64::max) * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Replay hop: latency, 1 connection (axum)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5..(n - 0.5), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(rows.len().max(1))
        .x_label_formatter(&|x| label_for(&names, *x))
        .y_desc("µs")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (p99, color, offset, label) in [(false, P50, -0.2, "p50"), (true, P99, 0.2, "p99")] {
        let bars = rows.iter().enumerate().map(|(i, r)| {
            let v = if p99 { r.single_p99() } else { r.single_p50() };
            let x = i as f64 + offset;
            Rectangle::new([(x - 0.18, 0.0), (x + 0.18, v)], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    let values = rows.iter().enumerate().flat_map(|(i, r)| {
        [(-0.2, r.single_p50()), (0.2, r.single_p99())].map(|(offset, us)| {
            Text::new(
                format!("{us:.0}"),
                (i as f64 + offset, us + top * 0.01),
                centred_above(),
            )
        })
    });
    chart.draw_series(values)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
