//! Pictures of training as SVG, drawn with plotters (its SVG backend needs no font files:
//! text is written as SVG text and left to the viewer): the curves of a run (`curves.svg`,
//! rewritten after every epoch), of several runs overlaid (`plflow plot`), and of a bench's
//! methods side by side (`bench.svg`, the mean over repeats), like the paper's Figures 3-5.
//!
//! Four panels share the epoch axis: accuracy (test solid, train light), the training loss
//! (cross-entropy) or residual (PL), seconds per epoch, and memory (ledger peak solid, process
//! peak RSS light).

use crate::error::EngineError;
use crate::report::EpochRecord;
use crate::sweep::{Axis, PointFigures};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One training stage's epochs, under the label its lines get.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend text: the run (and stage, when a run has several).
    pub label: String,
    /// Its epochs, in order.
    pub records: Vec<EpochRecord>,
}

/// The curves of a run folder's `metrics.jsonl`: one per training stage, labelled `label`,
/// or `label/stage` when the run trained several.
pub fn read_run(dir: &Path, label: &str) -> Result<Vec<Curve>, EngineError> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path, "cannot read"))?;
    let mut curves: Vec<Curve> = Vec::new();
    for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: EpochRecord = serde_json::from_str(line).map_err(|e| {
            let message =
                format!("line {} is not an epoch record ({e}); is this a plflow run folder?", k + 1);
            EngineError::io(&path, "cannot read")(std::io::Error::other(message))
        })?;
        match curves.iter_mut().find(|c| c.label == record.stage) {
            Some(c) => c.records.push(record),
            None => curves.push(Curve { label: record.stage.clone(), records: vec![record] }),
        }
    }
    let several = curves.len() > 1;
    for c in &mut curves {
        c.label = if several { format!("{label}/{}", c.label) } else { label.to_owned() };
    }
    Ok(curves)
}

/// The epoch-by-epoch mean of repeated runs of one method (epochs all runs reached).
pub fn mean_curve(label: &str, runs: &[Vec<EpochRecord>]) -> Curve {
    let epochs = runs.iter().map(Vec::len).min().unwrap_or(0);
    let records = (0..epochs)
        .map(|e| {
            let mean = |f: &dyn Fn(&EpochRecord) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(|r| f(&r[e])).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            EpochRecord {
                train_residual: mean(&|r| r.train_residual),
                train_loss: mean(&|r| r.train_loss),
                train_accuracy: mean(&|r| Some(r.train_accuracy)).unwrap_or(f64::NAN),
                test_accuracy: mean(&|r| r.test_accuracy),
                epoch_seconds: mean(&|r| Some(r.epoch_seconds)).unwrap_or(f64::NAN),
                ledger_peak_mb: mean(&|r| Some(r.ledger_peak_mb)).unwrap_or(f64::NAN),
                peak_rss_mb: mean(&|r| r.peak_rss_mb),
                ..runs[0][e].clone()
            }
        })
        .collect();
    Curve { label: label.to_owned(), records }
}

/// One line of a panel.
struct Line {
    label: Option<String>,
    color: RGBAColor,
    points: Vec<(f64, f64)>,
}

/// A panel: its title, y axis and lines.
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    lines: Vec<Line>,
    /// Start the y axis at zero (times and sizes, so that ratios read right).
    from_zero: bool,
}

/// The lines of `curves` for values `solid` (and `light`, drawn paler), by epoch.
fn lines(
    curves: &[Curve],
    legend: bool,
    solid: fn(&EpochRecord) -> Option<f64>,
    light: Option<fn(&EpochRecord) -> Option<f64>>,
) -> Vec<Line> {
    let mut out = Vec::new();
    for (k, c) in curves.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let points = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            let at = |r: &EpochRecord| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v));
            c.records.iter().filter_map(at).collect()
        };
        out.push(Line { label: legend.then(|| c.label.clone()), color, points: points(solid) });
        if let Some(light) = light {
            out.push(Line { label: None, color: color.mix(0.35), points: points(light) });
        }
    }
    out
}

/// The four panels of `curves`; the legend is on the first.
fn panels(curves: &[Curve]) -> [Panel; 4] {
    fn pct(v: f64) -> f64 {
        v * 100.0
    }
    [
        Panel {
            title: "accuracy (test solid, train light)",
            y_desc: "%",
            lines: lines(curves, true, |r| r.test_accuracy.map(pct), Some(|r| Some(pct(r.train_accuracy)))),
            from_zero: false,
        },
        Panel {
            title: "training loss (cross-entropy) or residual (PL)",
            y_desc: "loss / residual",
            lines: lines(curves, false, |r| r.train_loss.or(r.train_residual), None),
            from_zero: false,
        },
        Panel {
            title: "time per epoch",
            y_desc: "seconds",
            lines: lines(curves, false, |r| Some(r.epoch_seconds), None),
            from_zero: true,
        },
        Panel {
            title: "memory (ledger peak solid, process RSS light)",
            y_desc: "MB",
            lines: lines(curves, false, |r| Some(r.ledger_peak_mb), Some(|r| r.peak_rss_mb)),
            from_zero: true,
        },
    ]
}

/// `lo..hi` padded by 5%, widened when flat.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, panel: &Panel) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let all = || panel.lines.iter().flat_map(|l| l.points.iter());
    let (_, last) = range(all().map(|p| p.0));
    let x = (1.0f64, last.round().max(2.0));
    let mut y = range(all().map(|p| p.1));
    if panel.from_zero && y.0 > 0.0 {
        y.0 = 0.0;
    }
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for line in &panel.lines {
        let color = line.color;
        let series = LineSeries::new(line.points.iter().copied(), color.stroke_width(2));
        let drawn = chart.draw_series(series).map_err(e)?;
        if let Some(label) = &line.label {
            drawn
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        let marks = line.points.iter().map(|&p| Circle::new(p, 2, color.filled()));
        chart.draw_series(marks).map_err(e)?;
    }
    if panel.lines.iter().any(|l| l.label.is_some()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

/// The SVG text of `curves` in four panels under `title`.
pub fn curves_svg(curves: &[Curve], title: &str) -> Result<String, EngineError> {
    let mut svg = String::new();
    let drawn = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (1200, 860)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|e| e.to_string())?;
        for (area, panel) in root.split_evenly((2, 2)).iter().zip(panels(curves).iter()) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(|e| e.to_string())
    })();
    drawn.map_err(|m| {
        EngineError::io(Path::new("(svg)"), "cannot draw the curves")(std::io::Error::other(m))
    })?;
    Ok(svg)
}

/// The chart of a sweep, like the paper's Figures 6-9: for one axis, final test accuracy,
/// seconds per epoch and ledger peak against its values; for two, a heatmap of the final
/// test accuracy. `None` for more axes (the tables say it all).
pub fn sweep_svg(axes: &[Axis], points: &[PointFigures], title: &str) -> Result<Option<String>, EngineError> {
    let mut svg = String::new();
    let drawn = match axes {
        [axis] => sweep_lines(&mut svg, axis, points, title),
        [x, y] => sweep_heatmap(&mut svg, [x, y], points, title),
        _ => return Ok(None),
    };
    drawn.map_err(|m| {
        EngineError::io(Path::new("(svg)"), "cannot draw the sweep")(std::io::Error::other(m))
    })?;
    Ok(Some(svg))
}

fn sweep_lines(svg: &mut String, axis: &Axis, points: &[PointFigures], title: &str) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| e.to_string())?;
    type Panel = (&'static str, &'static str, fn(&PointFigures) -> f64, bool);
    let panels: [Panel; 3] = [
        ("final test accuracy", "%", |p| p.final_accuracy * 100.0, false),
        ("time per epoch (median)", "seconds", |p| p.epoch_seconds, true),
        ("ledger peak", "MB", |p| p.ledger_peak_mb, true),
    ];
    let n = axis.values.len();
    for (area, (name, unit, value, from_zero)) in root.split_evenly((1, 3)).iter().zip(panels) {
        let data: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, value(p)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let mut y = range(data.iter().map(|p| p.1));
        if from_zero && y.0 > 0.0 {
            y.0 = 0.0;
        }
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, y.0..y.1)
            .map_err(e)?;
        let label = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                axis.values.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(axis.key.as_str())
            .y_desc(unit)
            .x_labels(n.max(2) * 2 + 1)
            .x_label_formatter(&label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        let color = Palette99::pick(0).to_rgba();
        chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2))).map_err(e)?;
        chart.draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// A colour from dark blue (0) through teal to yellow (1), readable in grey too.
fn heat(t: f64) -> RGBColor {
    let stops = [(68.0, 1.0, 84.0), (33.0, 145.0, 140.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) * 2.0 } else { 0.0 };
    let (a, b, f) = if t <= 1.0 { (stops[0], stops[1], t) } else { (stops[1], stops[2], t - 1.0) };
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn sweep_heatmap(
    svg: &mut String,
    [x, y]: [&Axis; 2],
    points: &[PointFigures],
    title: &str,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (nx, ny) = (x.values.len(), y.values.len());
    let root = SVGBackend::with_string(svg, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("final test accuracy (%)", ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(120)
        .build_cartesian_2d(0f64..nx as f64, 0f64..ny as f64)
        .map_err(e)?;
    let label = |values: &[String], v: f64| {
        let i = (v - 0.5).round();
        if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
            values.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x.key.as_str())
        .y_desc(y.key.as_str())
        .x_labels(nx * 2 + 1)
        .y_labels(ny * 2 + 1)
        .x_label_formatter(&|v| label(&x.values, *v))
        .y_label_formatter(&|v| label(&y.values, *v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(e)?;
    let accs: Vec<f64> = points.iter().map(|p| p.final_accuracy * 100.0).collect();
    let (lo, hi) = range(accs.iter().copied().filter(|a| a.is_finite()));
    let cell = |k: usize| ((k / ny) as f64, (k % ny) as f64);
    chart
        .draw_series(accs.iter().enumerate().map(|(k, &a)| {
            let (i, j) = cell(k);
            Rectangle::new([(i, j), (i + 1.0, j + 1.0)], heat((a - lo) / (hi - lo)).filled())
        }))
        .map_err(e)?;
    let style = TextStyle::from(("sans-serif", 16)).pos(Pos::new(HPos::Center, VPos::Center));
    chart
        .draw_series(accs.iter().enumerate().map(|(k, &a)| {
            let (i, j) = cell(k);
            let ink = if (a - lo) / (hi - lo) > 0.6 { &BLACK } else { &WHITE };
            Text::new(format!("{a:.2}"), (i + 0.5, j + 0.5), style.color(ink))
        }))
        .map_err(e)?;
    root.present().map_err(|e| e.to_string())
}

/// Write the curves of `curves` to `path` (temp file, then rename).
pub fn write_svg(path: &Path, curves: &[Curve], title: &str) -> Result<(), EngineError> {
    crate::report::write_atomic(path, curves_svg(curves, title)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stage: &str, epoch: usize, acc: f64) -> EpochRecord {
        EpochRecord {
            stage: stage.into(),
            epoch,
            train_residual: None,
            train_loss: Some(1.0 / epoch as f64),
            train_accuracy: acc - 0.01,
            test_accuracy: Some(acc),
            evaluations: Default::default(),
            epoch_seconds: 1.5,
            samples_per_second: 1000.0,
            eval_seconds: 0.1,
            save_seconds: 0.0,
            forward_seconds: 0.5,
            propagate_seconds: 0.5,
            solve_seconds: 0.5,
            ledger_peak_mb: 9.0,
            peak_rss_mb: Some(25.0),
        }
    }

    #[test]
    fn a_run_folder_gives_one_curve_per_stage_and_an_svg_with_its_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines: Vec<String> = [record("pl", 1, 0.9), record("adam", 1, 0.8), record("pl", 2, 0.95)]
            .iter()
            .map(|r| serde_json::to_string(r).expect("json"))
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n") + "\n").expect("write");
        let curves = read_run(dir.path(), "run").expect("read");
        let labels: Vec<_> = curves.iter().map(|c| (c.label.as_str(), c.records.len())).collect();
        assert_eq!(labels, [("run/pl", 2), ("run/adam", 1)]);
        let path = dir.path().join("curves.svg");
        write_svg(&path, &curves, "two stages").expect("svg");
        let svg = std::fs::read_to_string(&path).expect("read svg");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        for want in ["two stages", "run/pl", "run/adam", "epoch", "seconds", "MB", "%", "time per epoch"] {
            assert!(
                texts.iter().any(|t| t.trim() == want || t.contains(want)),
                "no text `{want}` in {texts:?}"
            );
        }
        // The legend names each curve once (on the first panel).
        assert_eq!(texts.iter().filter(|t| t.trim() == "run/pl").count(), 1);
        // Data lines are the 2-pixel polylines, one per series (test and train accuracy, loss,
        // time, ledger and RSS) of each stage, in order: pl's have two points, adam's one.
        let data: Vec<usize> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .map(|n| n.attribute("points").unwrap_or_default().split_whitespace().count())
            .collect();
        assert_eq!(data, [2, 2, 1, 1, 2, 1, 2, 1, 2, 2, 1, 1], "per panel: pl's lines, then adam's");
        // Every epoch of every series is a marked point: pl 2 x 6, adam 1 x 6.
        let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
        assert_eq!(circles, 18);
    }

    #[test]
    fn a_bad_metrics_line_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("metrics.jsonl"), "{\"stage\": 3}\n").expect("write");
        let err = read_run(dir.path(), "run").expect_err("refused").to_string();
        assert!(err.contains("metrics.jsonl"), "{err}");
        let source = std::error::Error::source(&read_run(dir.path(), "r").expect_err("refused"))
            .map(|s| s.to_string());
        assert!(source.is_some_and(|s| s.contains("line 1")));
    }

    #[test]
    fn the_mean_of_repeats_is_taken_epoch_by_epoch() {
        let runs = vec![
            vec![record("t", 1, 0.5), record("t", 2, 0.7)],
            vec![record("t", 1, 0.7), record("t", 2, 0.9), record("t", 3, 0.95)],
        ];
        let mean = mean_curve("m", &runs);
        assert_eq!(mean.records.len(), 2);
        assert!((mean.records[1].test_accuracy.expect("acc") - 0.8).abs() < 1e-12);
        assert_eq!(mean.records[1].epoch, 2);
    }
}
