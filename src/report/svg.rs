//! The two plots of a matrix run, as SVG. Written directly rather than with
//! plotters: plotters lays out every label itself and so needs a font stack
//! (fontconfig + freetype, or a bundled TTF) on the machine that makes the
//! plot; SVG text is laid out by whoever views it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::matrix::{summarize, time_to_first_message};
use crate::report::Outcome;
use crate::scenario::PathKind;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Red (0%) through yellow to green (100%).
fn color(rate: f64) -> String {
    let r = if rate < 0.5 {
        220.0
    } else {
        220.0 * (1.0 - rate) * 2.0
    };
    let g = if rate < 0.5 {
        200.0 * rate * 2.0
    } else {
        180.0
    };
    format!("rgb({:.0},{:.0},60)", r, g)
}

/// One heat map per path: Alice's NAT down, Bob's NAT across, each cell the
/// success count.
pub fn success_heatmap(records: &[Outcome]) -> String {
    let cells = summarize(records);
    let alices: BTreeSet<&String> = cells.keys().map(|(a, _, _)| a).collect();
    let bobs: BTreeSet<&String> = cells.keys().map(|(_, b, _)| b).collect();
    let paths: BTreeSet<PathKind> = cells.keys().map(|(_, _, p)| *p).collect();
    let (cw, ch, label_w, label_h, gap) = (78.0, 30.0, 170.0, 130.0, 40.0);
    let grid_w = cw * bobs.len() as f64;
    // Room on the right for the last grid's slanted column labels.
    let width = label_w + (grid_w + gap) * paths.len() as f64 + 80.0;
    let height = label_h + ch * alices.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(svg, "<text x=\"10\" y=\"18\" font-size=\"14\">Punch success per NAT pair (rows: Alice's NAT, columns: Bob's NAT)</text>");
    for (pi, path) in paths.iter().enumerate() {
        let x0 = label_w + pi as f64 * (grid_w + gap);
        let _ = writeln!(
            svg,
            "<text x=\"{:.0}\" y=\"44\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            x0,
            path.name()
        );
        for (bi, b) in bobs.iter().enumerate() {
            let x = x0 + bi as f64 * cw + cw / 2.0;
            let _ = writeln!(
                svg,
                "<text transform=\"translate({x:.0},{:.0}) rotate(-40)\">{}</text>",
                label_h - 6.0,
                escape(b)
            );
        }
        for (ai, a) in alices.iter().enumerate() {
            let y = label_h + ai as f64 * ch;
            if pi == 0 {
                let _ = writeln!(
                    svg,
                    "<text x=\"6\" y=\"{:.0}\">{}</text>",
                    y + ch / 2.0 + 4.0,
                    escape(a)
                );
            }
            for (bi, b) in bobs.iter().enumerate() {
                let x = x0 + bi as f64 * cw;
                match cells.get(&((*a).clone(), (*b).clone(), *path)) {
                    Some(c) => {
                        let rate = c.ok as f64 / c.tries.max(1) as f64;
                        let _ = writeln!(svg, "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{cw}\" height=\"{ch}\" fill=\"{}\" stroke=\"white\"/>", color(rate));
                        let _ = writeln!(
                            svg,
                            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{}/{}</text>",
                            x + cw / 2.0,
                            y + ch / 2.0 + 4.0,
                            c.ok,
                            c.tries
                        );
                    }
                    None => {
                        let _ = writeln!(svg, "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{cw}\" height=\"{ch}\" fill=\"#eee\" stroke=\"white\"/>");
                    }
                }
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

const PALETTE: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// Cumulative distribution of the time to the first message, one line per
/// path, over all successful tries.
pub fn latency_cdf(records: &[Outcome]) -> String {
    let mut by_path: BTreeMap<PathKind, Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.ok) {
        if let Some(t) = time_to_first_message(r) {
            by_path.entry(PathKind::of(r)).or_default().push(t);
        }
    }
    let max = by_path.values().flatten().cloned().fold(1.0, f64::max);
    // A round scale: 1, 2 or 5 times a power of ten above the maximum.
    let magnitude = 10f64.powf(max.log10().floor());
    let top = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|t| *t >= max)
        .unwrap_or(max);
    let (w, h, left, bottom, top_pad, right) = (640.0, 400.0, 60.0, 50.0, 40.0, 150.0);
    let (pw, ph) = (w - left - right, h - bottom - top_pad);
    let px = |t: f64| left + pw * t / top;
    let py = |f: f64| top_pad + ph * (1.0 - f);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(svg, "<text x=\"{left}\" y=\"22\" font-size=\"14\">Time to the first message (CDF over successful tries)</text>");
    for i in 0..=5 {
        let t = top * i as f64 / 5.0;
        let _ = writeln!(svg, "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">{4:.0}</text>", px(t), py(0.0), py(1.0), py(0.0) + 16.0, t);
        let f = i as f64 / 5.0;
        let _ = writeln!(svg, "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{3:.1}\" y=\"{4:.1}\" text-anchor=\"end\">{5:.1}</text>", px(0.0), py(f), px(top), px(0.0) - 6.0, py(f) + 4.0, f);
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">ms from the connect request</text>",
        left + pw / 2.0,
        h - 10.0
    );
    for (i, (path, mut times)) in by_path.into_iter().enumerate() {
        times.sort_by(f64::total_cmp);
        let n = times.len() as f64;
        let mut points = format!("{:.1},{:.1}", px(0.0), py(0.0));
        for (k, t) in times.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                px(*t),
                py(k as f64 / n),
                px(*t),
                py((k + 1) as f64 / n)
            );
        }
        let color = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            svg,
            "<polyline points=\"{points}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>"
        );
        let ly = top_pad + 20.0 * i as f64 + 10.0;
        let _ = writeln!(svg, "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{3:.1}\" y=\"{4:.1}\">{5} (n={6})</text>", w - right + 10.0, ly, w - right + 30.0, w - right + 36.0, ly + 4.0, path.name(), times.len());
    }
    svg.push_str("</svg>\n");
    svg
}
