//! Plots of a report (plotters), each as SVG and PNG: bandwidth and metadata rates per
//! phase and target, latency percentiles per phase, and the figures against the swept
//! parameters. Text is drawn with the system's DejaVu Sans (Debian: fonts-dejavu-core),
//! loaded once at run time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use crate::error::{BenchError, Result};
use crate::hist::CURVE_PERCENTILES;
use crate::phase::Kind;
use crate::report::{Report, Summary};

/// Fonts tried in order.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONTS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no font for the plots: install fonts-dejavu-core (looked for {})",
                        FONTS.join(", ")
                    )
                })?;
            // The font lives as long as the process: plotters keeps a &'static to it.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "the plot font is not a TrueType font".to_owned())
        })
        .clone()
        .map_err(BenchError)
}

fn draw_error<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError(format!("cannot draw a plot: {e}"))
}

/// Draws `draw` into `dir/name.svg` and `dir/name.png`.
fn both(
    dir: &Path,
    name: &str,
    size: (u32, u32),
    draw: &dyn Fn(DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
    draw_png: &dyn Fn(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    draw(SVGBackend::new(&svg, size).into_drawing_area())?;
    draw_png(BitMapBackend::new(&png, size).into_drawing_area())?;
    Ok(vec![svg, png])
}

/// Every plot of the report, in `dir/plots/`; returns the files.
pub fn all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let dir = dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| crate::error::io_error("create", &dir, e))?;
    let mut files = Vec::new();
    let unswept: Vec<&Summary> = report
        .summary
        .iter()
        .filter(|s| s.point.is_empty())
        .collect();
    for (kind, name, unit) in [
        (Kind::Bandwidth, "bandwidth", "MiB/s"),
        (Kind::Metadata, "metadata", "operations/s"),
    ] {
        let rows: Vec<&Summary> = unswept.iter().copied().filter(|s| s.kind == kind).collect();
        if !rows.is_empty() {
            let size = ((rows.len() as u32 * 90).clamp(700, 1600), 520);
            files.extend(both(&dir, name, size, &|a| bars(a, &rows, unit), &|a| {
                bars(a, &rows, unit)
            })?);
        }
    }
    let mut targets: Vec<&str> = Vec::new();
    for r in &report.results {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
    }
    for target in targets {
        let curves = latency_curves(report, target);
        if !curves.is_empty() {
            let name = format!("latency-{}", sanitize(target));
            let title = format!("Latency percentiles on {target} (first repetition)");
            files.extend(both(
                &dir,
                &name,
                (900, 560),
                &|a| latency(a, &title, &curves),
                &|a| latency(a, &title, &curves),
            )?);
        }
    }
    files.extend(sweep_plots(report, &dir)?);
    Ok(files)
}

/// The sweep's figures and latencies against its points (none outside a sweep).
fn sweep_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let swept: Vec<&Summary> = report
        .summary
        .iter()
        .filter(|s| !s.point.is_empty())
        .collect();
    if !swept.is_empty() {
        for (kind, name, unit) in [
            (Kind::Bandwidth, "sweep-bandwidth", "MiB/s"),
            (Kind::Metadata, "sweep-metadata", "operations/s"),
        ] {
            let rows: Vec<&Summary> = swept.iter().copied().filter(|s| s.kind == kind).collect();
            if !rows.is_empty() {
                files.extend(both(
                    dir,
                    name,
                    (900, 520),
                    &|a| sweep(a, &rows, unit, |s| Some(s.mean)),
                    &|a| sweep(a, &rows, unit, |s| Some(s.mean)),
                )?);
            }
        }
        let unit = "median latency of the main operation, µs";
        files.extend(both(
            dir,
            "sweep-latency",
            (900, 520),
            &|a| sweep(a, &swept, unit, |s| s.p50_us),
            &|a| sweep(a, &swept, unit, |s| s.p50_us),
        )?);
    }
    Ok(files)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Ordered distinct values.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for i in items {
        if !v.contains(&i) {
            v.push(i);
        }
    }
    v
}

/// The y range of a log-scaled bar plot: a file system and its baseline often differ by
/// orders of magnitude.
fn log_range(rows: &[&Summary]) -> (f64, f64) {
    let ymax = rows
        .iter()
        .map(|s| s.mean + s.stddev.unwrap_or(0.0))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 2.0;
    let ymin = rows
        .iter()
        .map(|s| s.mean - s.stddev.unwrap_or(0.0))
        .filter(|v| *v > 0.0)
        .fold(ymax, f64::min)
        / 2.0;
    (ymin, ymax)
}

fn bars_title(unit: &str) -> &'static str {
    if unit == "MiB/s" {
        "Bandwidth per phase"
    } else {
        "Metadata rate per phase"
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, size))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(draw_error)
}

/// Grouped bars: a group per phase, a bar per target (its mean, with a ±sd whisker).
fn bars<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    rows: &[&Summary],
    unit: &str,
) -> Result<()> {
    area.fill(&WHITE).map_err(draw_error)?;
    let phases = distinct(rows.iter().map(|s| s.phase.as_str()));
    let targets = distinct(rows.iter().map(|s| s.target.as_str()));
    let k = targets.len() as i32;
    // Each bar is two units wide; a group is its bars and a two-unit gap.
    let group = 2 * k + 2;
    let (ymin, ymax) = log_range(rows);
    let mut chart = ChartBuilder::on(&area)
        .caption(bars_title(unit), (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0..group * phases.len() as i32, (ymin..ymax).log_scale())
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels((group * phases.len() as i32 + 1) as usize)
        .x_label_formatter(&|x| {
            let (g, at) = (x / group, x % group);
            if at == k {
                phases
                    .get(g as usize)
                    .map_or(String::new(), |p| (*p).to_owned())
            } else {
                String::new()
            }
        })
        .x_label_style((FONT, 12))
        .y_desc(format!("{unit} (log)"))
        .y_label_style((FONT, 12))
        .draw()
        .map_err(draw_error)?;
    for (t, target) in targets.iter().enumerate() {
        let color = Palette99::pick(t).to_rgba();
        let bars: Vec<(i32, &Summary)> = rows
            .iter()
            .filter(|s| s.target == *target)
            .filter_map(|s| {
                phases
                    .iter()
                    .position(|p| *p == s.phase)
                    .map(|g| (g as i32 * group + 1 + 2 * t as i32, *s))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                Rectangle::new([(*x, ymin), (*x + 2, s.mean.max(ymin))], color.filled())
            }))
            .map_err(draw_error)?
            .label(*target)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(
                bars.iter()
                    .filter_map(|(x, s)| Some((x, s.mean, s.stddev?)))
                    .filter(|(_, _, sd)| *sd > 0.0)
                    .map(|(x, mean, sd)| {
                        PathElement::new(
                            vec![(*x + 1, (mean - sd).max(ymin)), (*x + 1, mean + sd)],
                            BLACK.stroke_width(2),
                        )
                    }),
            )
            .map_err(draw_error)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;
    area.present().map_err(draw_error)
}

/// (phase, (percentile, µs) points) of the main operation of each phase, first repetition.
fn latency_curves(report: &Report, target: &str) -> Vec<(String, Vec<[f64; 2]>)> {
    let mut out: BTreeMap<usize, (String, Vec<[f64; 2]>)> = BTreeMap::new();
    for (i, r) in report.results.iter().enumerate() {
        if r.target != target || r.rep != 0 || !r.point.is_empty() {
            continue;
        }
        if let Some(op) = crate::report::main_op(&r.latency) {
            let curve = r.latency[op].curve.clone();
            out.insert(i, (format!("{} ({op})", r.phase), curve));
        }
    }
    out.into_values().collect()
}

fn latency<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[(String, Vec<[f64; 2]>)],
) -> Result<()> {
    area.fill(&WHITE).map_err(draw_error)?;
    let values = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p[1]));
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = ((lo * 0.8).max(0.01), (hi * 1.25).max(lo * 2.0).max(0.1));
    let n = CURVE_PERCENTILES.len() as i32;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0..n - 1, (lo..hi).log_scale())
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_labels(n as usize)
        .x_label_formatter(&|i| match CURVE_PERCENTILES.get(*i as usize) {
            Some(p) if *p == 0.0 => "min".to_owned(),
            Some(p) if *p == 100.0 => "max".to_owned(),
            Some(p) => format!("p{p}"),
            None => String::new(),
        })
        .x_label_style((FONT, 12))
        .y_desc("latency, µs (log)")
        .y_label_style((FONT, 12))
        .draw()
        .map_err(draw_error)?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(i32, f64)> = curve
            .iter()
            .enumerate()
            .map(|(x, p)| (x as i32, p[1].max(lo)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(draw_error)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, 12)?;
    area.present().map_err(draw_error)
}

/// A sweep point as a label: `name=value` pairs.
fn point_label(s: &Summary) -> String {
    s.point
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line per phase (first target) over the swept points, in the order they ran.
fn sweep<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    rows: &[&Summary],
    unit: &str,
    value: fn(&Summary) -> Option<f64>,
) -> Result<()> {
    area.fill(&WHITE).map_err(draw_error)?;
    let target = rows[0].target.clone();
    let rows: Vec<&Summary> = rows
        .iter()
        .copied()
        .filter(|s| s.target == target)
        .collect();
    let labels: Vec<String> = rows.iter().map(|s| point_label(s)).collect();
    let points = distinct(labels.iter().map(String::as_str));
    let phases = distinct(rows.iter().map(|s| s.phase.as_str()));
    // A log scale: the phases' figures differ by orders of magnitude.
    let values: Vec<f64> = rows
        .iter()
        .filter_map(|s| value(s))
        .filter(|v| *v > 0.0)
        .collect();
    let ymax = values.iter().copied().fold(1e-9, f64::max) * 2.0;
    let ymin = values.iter().copied().fold(ymax, f64::min) / 2.0;
    let n = points.len() as i32;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!("{target}, against the swept parameters"),
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-1..n, (ymin..ymax).log_scale())
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_labels(n as usize + 2)
        .x_label_formatter(&|i| {
            points
                .get(*i as usize)
                .map_or(String::new(), |p| (*p).to_owned())
        })
        .x_label_style((FONT, 12))
        .y_desc(format!("{unit} (log)"))
        .y_label_style((FONT, 12))
        .draw()
        .map_err(draw_error)?;
    for (i, phase) in phases.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(i32, f64)> = rows
            .iter()
            .filter(|s| s.phase == *phase)
            .filter_map(|s| {
                points
                    .iter()
                    .position(|p| *p == point_label(s))
                    .zip(value(s))
                    .map(|(x, v)| (x as i32, v.max(ymin)))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(*phase)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(draw_error)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, 12)?;
    area.present().map_err(draw_error)
}
