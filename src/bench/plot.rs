//! The comparison sweep as a figure: throughput and p99 latency against
//! clients, one line per mode, one row of charts per workload, as SVG.

use std::path::Path;

use plotters::prelude::*;

/// One point of the sweep: a mode's throughput and p99 at a client count.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Concurrent clients.
    pub clients: u32,
    /// Calls answered per second.
    pub throughput: f64,
    /// p99 latency, milliseconds.
    pub p99_ms: f64,
}

/// A mode's line over the sweep, e.g. "group commit".
#[derive(Debug, Clone)]
pub struct Line {
    /// Its name in the legend.
    pub mode: &'static str,
    /// Its points, by client count.
    pub points: Vec<Point>,
}

/// The lines of one workload, e.g. "one hot tenant".
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its name, in the charts' captions.
    pub name: &'static str,
    /// One line per mode.
    pub lines: Vec<Line>,
}

/// Colours of the modes, in the order given.
const COLOURS: [RGBColor; 5] = [
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draws `workloads` into an SVG file at `path`: per workload, throughput
/// (left) and p99 (right, logarithmic) against clients (logarithmic).
///
/// # Errors
/// The file could not be written, or a chart could not be laid out.
pub fn draw(path: &Path, workloads: &[Workload]) -> Result<(), Box<dyn std::error::Error>> {
    let rows = u32::try_from(workloads.len().max(1))?;
    let root = SVGBackend::new(path, (1100, 380 * rows)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((workloads.len().max(1), 2));
    for (workload, pair) in workloads.iter().zip(panels.chunks(2)) {
        let points = || workload.lines.iter().flat_map(|line| line.points.iter());
        let most_clients = points().map(|p| p.clients).max().unwrap_or(1).max(2);
        let top_throughput = points().map(|p| p.throughput).fold(1.0, f64::max) * 1.1;
        let (low_ms, high_ms) = points().fold((f64::MAX, 0.0_f64), |(low, high), p| {
            (low.min(p.p99_ms), high.max(p.p99_ms))
        });
        let (low_ms, high_ms) = ((low_ms * 0.8).max(0.01), (high_ms * 1.25).max(0.1));

        let mut throughput = ChartBuilder::on(&pair[0])
            .caption(
                format!("{}: calls answered per second", workload.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((1..most_clients).log_scale(), 0.0..top_throughput)?;
        throughput
            .configure_mesh()
            .x_desc("clients")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let mut latency = ChartBuilder::on(&pair[1])
            .caption(
                format!("{}: p99 latency (ms)", workload.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((1..most_clients).log_scale(), (low_ms..high_ms).log_scale())?;
        latency.configure_mesh().x_desc("clients").draw()?;

        for (line, colour) in workload.lines.iter().zip(COLOURS.iter().cycle()) {
            let style = colour.stroke_width(2);
            throughput
                .draw_series(LineSeries::new(
                    line.points.iter().map(|p| (p.clients, p.throughput)),
                    style,
                ))?
                .label(line.mode)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            throughput.draw_series(
                line.points
                    .iter()
                    .map(|p| Circle::new((p.clients, p.throughput), 3, colour.filled())),
            )?;
            latency.draw_series(LineSeries::new(
                line.points.iter().map(|p| (p.clients, p.p99_ms)),
                style,
            ))?;
            latency.draw_series(
                line.points
                    .iter()
                    .map(|p| Circle::new((p.clients, p.p99_ms), 3, colour.filled())),
            )?;
        }
        throughput
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep draws to a file holding every mode's name and one polyline
    /// per line per chart.
    #[test]
    fn a_sweep_draws_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        let line = |mode, scale| Line {
            mode,
            points: [1, 16, 64, 256]
                .into_iter()
                .map(|clients| Point {
                    clients,
                    throughput: f64::from(clients) * scale,
                    p99_ms: f64::from(clients) / 10.0,
                })
                .collect(),
        };
        let workloads = [
            Workload {
                name: "one hot tenant",
                lines: vec![line("group commit", 100.0), line("per call", 10.0)],
            },
            Workload {
                name: "1,000 tenants",
                lines: vec![line("group commit", 50.0), line("per call", 5.0)],
            },
        ];
        draw(&path, &workloads).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "group commit",
            "per call",
            "one hot tenant",
            "1,000 tenants",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Two workloads × two lines × (two charts and the legend).
        let lines = svg
            .lines()
            .filter(|line| line.starts_with("<polyline") && line.contains("stroke-width=\"2\""))
            .count();
        assert_eq!(lines, 12, "{svg}");
    }
}
