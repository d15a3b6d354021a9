//! The demo's HTML report: one page with inline SVG charts of the weight, the success rate
//! and the P99 over time against their thresholds, the share of users per step, the summary
//! and the events. No scripts and no external files, so it opens anywhere.
//!
//! Layout rules, each checked in real headless Chromium by the tests below:
//! - the charts take the page's width (an SVG `viewBox` scaled to 100%);
//! - phase labels sit in a band above the plot, in two rows, so no threshold or data line
//!   crosses them, and close labels take the other row;
//! - threshold labels sit in the right margin, at their line;
//! - the P99 axis is scaled to the data; a threshold far above it is named in the margin as
//!   "above the chart" instead of squashing the data into a flat line.

use super::{CanaryFacts, DemoOptions, Sample};
use crate::users::WeightShare;
use std::fmt::Write as _;

/// The chart's coordinate system (the `viewBox`); the browser scales it to the page width.
const W: f64 = 1300.0;
const H: f64 = 230.0;
const LEFT: f64 = 64.0;
/// Room for the threshold labels, right of the plot.
const RIGHT: f64 = 116.0;
/// Room for the title and the two rows of phase labels above the plot.
const TOP: f64 = 52.0;
const BOTTOM: f64 = 28.0;
/// Baselines of the two rows of phase labels.
const MARKER_ROWS: [f64; 2] = [TOP - 18.0, TOP - 6.0];
/// Approximate advance of one character at the marker font size (10), for placing labels.
const MARKER_CHAR_WIDTH: f64 = 6.2;
const LEGEND_CHAR_WIDTH: f64 = 6.8;

/// A vertical marker at a point in time: a phase change or an event.
struct Marker {
    t: f64,
    label: String,
    color: &'static str,
}

struct Chart<'a> {
    /// `data-chart`, for the layout checks.
    id: &'a str,
    title: &'a str,
    unit: &'a str,
    y_min: f64,
    y_max: f64,
    t_max: f64,
}

impl Chart<'_> {
    fn x(&self, t: f64) -> f64 {
        LEFT + t / self.t_max.max(1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        let v = v.clamp(self.y_min, self.y_max);
        TOP + (1.0 - (v - self.y_min) / (self.y_max - self.y_min).max(1e-9)) * (H - TOP - BOTTOM)
    }

    fn frame(&self, svg: &mut String, markers: &[Marker]) {
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{id}" viewBox="0 0 {W} {H}" width="100%" preserveAspectRatio="xMinYMin meet" font-family="sans-serif" font-size="11">
<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{title}</text>
<rect class="plot" x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            id = self.id,
            title = html_escape(self.title),
        );
        let tick = nice_tick(self.y_max - self.y_min);
        let first = (self.y_min / tick).ceil() as i64;
        let last = (self.y_max / tick).floor() as i64;
        for i in first..=last {
            let v = i as f64 * tick;
            let y = self.y(v);
            let _ = write!(
                svg,
                r##"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}{}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                fmt_num(v),
                self.unit
            );
        }
        let step = nice_step(self.t_max);
        let mut t = 0.0;
        while t <= self.t_max + 0.01 {
            // The first starts at the axis, clear of the lowest value label left of it.
            let anchor = if t == 0.0 { "start" } else { "middle" };
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{}" text-anchor="{anchor}" fill="#555">{t:.0}s</text>"##,
                self.x(t),
                H - BOTTOM + 14.0
            );
            t += step;
        }
        let mut row_end = [f64::NEG_INFINITY; 2];
        for m in markers {
            let x = self.x(m.t);
            let _ = write!(
                svg,
                r##"<line class="marker" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="{}" stroke-dasharray="2,3"/>"##,
                H - BOTTOM,
                m.color
            );
            // Right of its line, unless that runs past the plot; then left of it.
            let width = MARKER_CHAR_WIDTH * m.label.chars().count() as f64;
            let (anchor, left, text_x) = if x + 3.0 + width <= W - RIGHT {
                ("start", x + 3.0, x + 3.0)
            } else {
                ("end", x - 3.0 - width, x - 3.0)
            };
            // The first row where it fits after the labels already there, else the row
            // that ends first.
            let row = (0..2)
                .find(|&r| left >= row_end[r] + 6.0)
                .unwrap_or_else(|| if row_end[0] <= row_end[1] { 0 } else { 1 });
            row_end[row] = left + width;
            let _ = write!(
                svg,
                r##"<text class="marker-label" x="{text_x:.1}" y="{}" text-anchor="{anchor}" fill="{}" font-size="10">{}</text>"##,
                MARKER_ROWS[row],
                m.color,
                html_escape(&m.label)
            );
        }
    }

    fn line(&self, svg: &mut String, points: &[(f64, Option<f64>)], color: &str, step: bool) {
        let mut d = String::new();
        let mut pen_down = false;
        for (t, v) in points {
            match v {
                Some(v) => {
                    let (x, y) = (self.x(*t), self.y(*v));
                    if !pen_down {
                        let _ = write!(d, "M{x:.1},{y:.1}");
                    } else if step {
                        let _ = write!(d, "H{x:.1}V{y:.1}");
                    } else {
                        let _ = write!(d, "L{x:.1},{y:.1}");
                    }
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r##"<path class="series" d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"##
        );
    }

    /// A threshold line labelled in the right margin. One above the axis is not drawn but
    /// named at the top of the margin, so the data keeps the chart's height.
    fn threshold(&self, svg: &mut String, v: f64, label: &str) {
        let label_x = W - RIGHT + 6.0;
        if v > self.y_max {
            let _ = write!(
                svg,
                r##"<text class="threshold-label" x="{label_x}" y="{}" fill="#d62728">&#8593; {}</text><text class="threshold-label" x="{label_x}" y="{}" fill="#d62728" font-size="10">above the chart</text>"##,
                TOP + 10.0,
                html_escape(label),
                TOP + 23.0
            );
            return;
        }
        let y = self.y(v);
        let _ = write!(
            svg,
            r##"<line class="threshold" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="6,4"/><text class="threshold-label" x="{label_x}" y="{:.1}" fill="#d62728">{}</text>"##,
            W - RIGHT,
            y + 4.0,
            html_escape(label)
        );
    }

    /// The legend, right-aligned on the title's line.
    fn legend(&self, svg: &mut String, items: &[(&str, &str)]) {
        let mut x = W - RIGHT;
        for (name, color) in items.iter().rev() {
            x -= LEGEND_CHAR_WIDTH * name.chars().count() as f64 + 30.0;
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="8" width="12" height="4" fill="{color}"/><text x="{:.1}" y="14">{}</text>"##,
                x + 16.0,
                html_escape(name)
            );
        }
    }
}

/// An axis value as short as it can be without changing it: ticks are multiples of 1, 2,
/// 2.5 or 5 times a power of ten, so two decimals are enough down to 0.01.
fn fmt_num(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A round tick spacing giving about four to eight ticks over `range`.
fn nice_tick(range: f64) -> f64 {
    let raw = (range / 6.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|t| *t >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The smallest round number at or above `v`, on the tick spacing of `0..v`.
fn nice_ceiling(v: f64) -> f64 {
    let tick = nice_tick(v);
    (v / tick).ceil() * tick
}

fn nice_step(t_max: f64) -> f64 {
    [5.0, 10.0, 15.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|s| t_max / s <= 12.0)
        .unwrap_or(300.0)
}

/// The top of the P99 axis: the data with headroom, and the threshold too when it is close
/// enough to the data (within 3x) to be drawn without flattening the lines.
fn p99_axis_max(highest: f64, threshold: Option<f64>) -> f64 {
    let data_top = highest.max(1.0);
    let top = match threshold {
        Some(m) if m <= data_top * 3.0 => m.max(data_top) * 1.15,
        _ => data_top * 1.25,
    };
    nice_ceiling(top)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart of one value per variant (primary grey, canary green) against its threshold.
fn per_variant_chart(
    svg: &mut String,
    chart: &Chart<'_>,
    markers: &[Marker],
    threshold: Option<(f64, String)>,
    samples: &[Sample],
    values: impl Fn(&Sample) -> [Option<f64>; 2],
) {
    const COLORS: [(&str, &str); 2] = [("primary", "#7f7f7f"), ("canary", "#2ca02c")];
    chart.frame(svg, markers);
    if let Some((v, label)) = threshold {
        chart.threshold(svg, v, &label);
    }
    for (i, (_, color)) in COLORS.iter().enumerate() {
        let points: Vec<(f64, Option<f64>)> = samples.iter().map(|s| (s.t, values(s)[i])).collect();
        chart.line(svg, &points, color, false);
    }
    chart.legend(svg, &COLORS);
    svg.push_str("</svg>\n");
}

/// The report page.
pub(super) fn report_html(
    facts: &CanaryFacts,
    options: &DemoOptions,
    samples: &[Sample],
    events: &[(f64, String)],
    shares: &[WeightShare],
    summary_text: &str,
    as_expected: bool,
) -> String {
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let mut markers: Vec<Marker> = Vec::new();
    let mut last_phase = "";
    for s in samples {
        // The run starts in Initialized (v1 is the primary); only changes are marked.
        if s.phase != last_phase && !(last_phase.is_empty() && s.phase == "Initialized") {
            markers.push(Marker {
                t: s.t,
                label: s.phase.clone(),
                color: "#666",
            });
        }
        last_phase = &s.phase;
    }
    for (t, e) in events {
        if e.starts_with("v2 breaks") {
            markers.push(Marker {
                t: *t,
                label: "v2 breaks".into(),
                color: "#d62728",
            });
        }
    }
    markers.sort_by(|a, b| a.t.total_cmp(&b.t));
    let series = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
        samples.iter().map(|s| (s.t, f(s))).collect()
    };

    let mut charts = String::new();
    // Weight and who is on the canary.
    let c = Chart {
        id: "weight",
        title: "Canary weight; users on the canary route, and served by v2",
        unit: "%",
        y_min: 0.0,
        y_max: 100.0,
        t_max,
    };
    c.frame(&mut charts, &markers);
    c.threshold(
        &mut charts,
        f64::from(facts.max_weight),
        &format!("maxWeight {}%", facts.max_weight),
    );
    c.line(
        &mut charts,
        &series(&|s| Some(s.weight as f64)),
        "#1f77b4",
        true,
    );
    c.line(
        &mut charts,
        &series(&|s| Some(s.users_on_v2 as f64 * 100.0 / s.users_seen.max(1) as f64)),
        "#9467bd",
        false,
    );
    c.line(
        &mut charts,
        &series(&|s| Some(s.users_on_canary as f64 * 100.0 / s.users_seen.max(1) as f64)),
        "#ff7f0e",
        false,
    );
    c.legend(
        &mut charts,
        &[
            ("weight", "#1f77b4"),
            ("users on canary", "#ff7f0e"),
            ("served by v2", "#9467bd"),
        ],
    );
    charts.push_str("</svg>\n");

    // Success rate.
    let lowest = samples
        .iter()
        .flat_map(|s| s.success.iter().flatten().copied())
        .fold(100.0f64, f64::min);
    let floor = facts.min_success.unwrap_or(100.0).min(lowest);
    let y_min = (((floor - 2.0) / 5.0).floor() * 5.0).max(0.0);
    let c = Chart {
        id: "success",
        title: "Success rate (non-5xx) per variant",
        unit: "%",
        y_min,
        // A little headroom so the lines at 100% do not hide in the frame.
        y_max: 100.0 + (100.0 - y_min) * 0.04,
        t_max,
    };
    let min = facts.min_success.map(|m| (m, format!("min {m}%")));
    per_variant_chart(&mut charts, &c, &markers, min, samples, |s| s.success);

    // P99.
    let highest = samples
        .iter()
        .flat_map(|s| s.p99.iter().flatten().copied())
        .fold(0.0f64, f64::max);
    let c = Chart {
        id: "p99",
        title: "P99 latency per variant",
        unit: "ms",
        y_min: 0.0,
        y_max: p99_axis_max(highest, facts.max_p99),
        t_max,
    };
    let max = facts.max_p99.map(|m| (m, format!("max {m} ms")));
    per_variant_chart(&mut charts, &c, &markers, max, samples, |s| s.p99);

    let mut share_rows = String::new();
    for s in shares.iter().filter(|s| s.weight_bp > 0) {
        let _ = write!(
            share_rows,
            "<tr><td>{}%</td><td>{:.1}%</td><td>{}</td><td>{:.1}%</td><td>{}</td></tr>",
            s.weight_bp / 100,
            s.user_share() * 100.0,
            s.users,
            s.request_share() * 100.0,
            s.requests
        );
    }
    let mut event_rows = String::new();
    for (t, e) in events {
        let _ = write!(
            event_rows,
            "<tr><td>t+{t:.0}s</td><td>{}</td></tr>",
            html_escape(e)
        );
    }
    let verdict_color = if as_expected { "#2ca02c" } else { "#d62728" };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>veer demo report{faulty}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1600px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 15px; margin-top: 24px; }}
svg.chart {{ display: block; width: 100%; height: auto; margin: 8px 0 16px; }}
pre {{ background: #f5f5f5; padding: 10px; font-size: 12px; white-space: pre-wrap; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:last-child {{ text-align: left; }} .verdict {{ font-weight: bold; color: {verdict_color}; }}
</style></head><body>
<h1>veer demo{faulty}: {key} from v1 to v2</h1>
<p class="verdict">{verdict}</p>
<p>Gateway Envoy with the veer filter (release wasm, V8), Prometheus scraping it every second, the veer controller
analysing a Flagger Canary (every {interval:?}: +{step}% up to {max}%, success rate &ge; {min_s}%, P99 &le; {max_p} ms,
{threshold} failed checks roll back), {users} simulated users keeping their cookies at about {rps:.0} requests/s.</p>
{charts}
<h2>Share of users and requests on v2 at each weight</h2>
<table><tr><th>weight</th><th>users on v2</th><th>users seen</th><th>requests on v2</th><th>requests</th></tr>{share_rows}</table>
<h2>Summary</h2><pre>{summary}</pre>
<h2>Events</h2><table>{event_rows}</table>
</body></html>
"#,
        faulty = if options.faulty { " (faulty v2)" } else { "" },
        key = facts.key,
        verdict = html_escape(
            summary_text
                .lines()
                .find(|l| l.trim_start().starts_with("verdict"))
                .unwrap_or("")
                .trim()
        ),
        interval = facts.interval,
        step = facts.step,
        max = facts.max_weight,
        min_s = facts.min_success.map_or("-".into(), |v| v.to_string()),
        max_p = facts.max_p99.map_or("-".into(), |v| v.to_string()),
        threshold = facts.threshold,
        users = options.users,
        rps = options.requests_per_second,
        summary = html_escape(summary_text.trim()),
    )
}

/// The report in real headless Chromium (`scripts/chromium.sh`), on three runs shaped like
/// the demo's (healthy, faulty, and one whose P99 crosses its threshold): no label overlaps
/// another or is crossed by a threshold or phase line, nothing runs out of its chart, the
/// charts take the page's width, and the P99 lines use the chart's height. Screenshots go to
/// `target/e2e/demo-report/`, to look at.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace_root;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    /// Measures the page as laid out and appends the findings as JSON in `#layout-check`.
    const LAYOUT_CHECK: &str = r#"<script>
(function () {
  const problems = [];
  const box = (e) => e.getBoundingClientRect();
  const crosses = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 &&
    a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  const charts = [];
  for (const svg of document.querySelectorAll('svg.chart')) {
    const name = svg.dataset.chart;
    const s = box(svg);
    const texts = [...svg.querySelectorAll('text')]
      .filter((t) => t.textContent.trim() !== '')
      .map((t) => ({ text: t.textContent, b: box(t) }));
    for (const t of texts) {
      if (t.b.left < s.left - 1 || t.b.right > s.right + 1 || t.b.top < s.top - 1 || t.b.bottom > s.bottom + 1) {
        problems.push(`${name}: "${t.text}" runs out of the chart`);
      }
    }
    for (let i = 0; i < texts.length; i++) {
      for (let j = i + 1; j < texts.length; j++) {
        if (crosses(texts[i].b, texts[j].b)) {
          problems.push(`${name}: "${texts[i].text}" overlaps "${texts[j].text}"`);
        }
      }
    }
    for (const line of svg.querySelectorAll('line.threshold, line.marker')) {
      for (const t of texts) {
        if (crosses(box(line), t.b)) {
          problems.push(`${name}: "${t.text}" is crossed by a ${line.getAttribute('class')} line`);
        }
      }
    }
    const plot = box(svg.querySelector('rect.plot'));
    const heights = [...svg.querySelectorAll('path.series')].map((p) => box(p).height);
    charts.push({ name, width: s.width, tallestSeries: Math.max(0, ...heights) / plot.height });
  }
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({
    viewport: window.innerWidth,
    pageWidth: document.documentElement.scrollWidth,
    charts,
    problems,
  });
  document.body.appendChild(out);
})();
</script>"#;

    #[derive(Clone, Copy, PartialEq)]
    enum Run {
        Healthy,
        Faulty,
        /// The canary's P99 rises past the 500 ms threshold.
        Slow,
    }

    fn facts() -> CanaryFacts {
        CanaryFacts {
            key: "test/podinfo".into(),
            interval: Duration::from_secs(4),
            threshold: 3,
            step: 10,
            max_weight: 50,
            min_success: Some(99.0),
            max_p99: Some(500.0),
            window: "12s".into(),
        }
    }

    /// A run shaped like the demo's: a pass every 4 s, +10% up to 50%, P99 of a few ms.
    fn samples(run: Run) -> Vec<Sample> {
        let broken = run != Run::Healthy;
        let end = if broken { 33 } else { 37 };
        (0..=end)
            .map(|t| {
                let t = f64::from(t);
                let (phase, weight) = match (run, t as u32) {
                    (_, 0) => ("Initialized", 0),
                    (Run::Healthy, 24..=27) => ("Promoting", 50),
                    (Run::Healthy, 28..=31) => ("Finalising", 0),
                    (Run::Healthy, 32..) => ("Succeeded", 0),
                    (_, 29..) if broken => ("Failed", 0),
                    (_, s) => ("Progressing", (s.saturating_sub(1) / 4 * 10).min(50)),
                };
                let weight = if broken && (13.0..29.0).contains(&t) {
                    30
                } else {
                    weight
                };
                let on_canary = weight as usize * 3;
                let promoted = run == Run::Healthy && t >= 24.0;
                let canary_success = (weight > 0).then(|| {
                    if run == Run::Faulty && t >= 14.0 {
                        100.0 - (t - 12.0).min(20.0)
                    } else {
                        99.8 + (t % 3.0) * 0.1
                    }
                });
                let canary_p99 = (weight > 0).then(|| {
                    if run == Run::Slow && t >= 14.0 {
                        200.0 + (t - 14.0) * 40.0
                    } else {
                        1.0 + (t % 5.0)
                    }
                });
                Sample {
                    t,
                    phase: phase.into(),
                    weight: weight as u64,
                    failed_checks: if broken && (17.0..29.0).contains(&t) {
                        ((t - 13.0) / 4.0) as u64
                    } else {
                        0
                    },
                    success: [Some(100.0), canary_success],
                    p99: [Some(2.0 + (t % 7.0)), canary_p99],
                    rps: [150.0 - weight as f64 * 1.5, weight as f64 * 1.5],
                    request_share: f64::from(weight) / 100.0,
                    users_on_canary: on_canary,
                    users_on_v2: if promoted { 300 } else { on_canary },
                    users_seen: 300,
                    flip_backs: 0,
                    primary_identity: if promoted { "v2" } else { "v1" }.into(),
                    rolled_back_at: (broken && t >= 29.0).then_some(3),
                }
            })
            .collect()
    }

    fn events(run: Run) -> Vec<(f64, String)> {
        let mut events = vec![
            (0.0, "v2 posted: the run starts".to_string()),
            (1.0, "phase Progressing".into()),
        ];
        if run != Run::Healthy {
            events.push((
                13.0,
                "v2 breaks: 20% of its answers are now HTTP 500".into(),
            ));
            for (i, t) in [17.0, 21.0, 25.0].into_iter().enumerate() {
                events.push((
                    t,
                    format!(
                        "Halt test/podinfo advancement ({}/3 failed checks): metric request-success-rate: value 88.92 is outside the threshold range (value >= 99)",
                        i + 1
                    ),
                ));
            }
        }
        events
    }

    fn report(run: Run) -> String {
        let options = DemoOptions {
            faulty: run == Run::Faulty,
            users: 300,
            requests_per_second: 150.0,
            out_dir: PathBuf::new(),
            live: false,
            hold: false,
            kubernetes: false,
        };
        let shares: Vec<WeightShare> = [10, 20, 30]
            .into_iter()
            .map(|w| WeightShare {
                weight_bp: w * 100,
                users: 300,
                users_on_canary: w as usize * 3,
                requests: 600,
                requests_on_canary: w as usize * 6,
            })
            .collect();
        report_html(
            &facts(),
            &options,
            &samples(run),
            &events(run),
            &shares,
            "veer demo summary\n  verdict    as expected",
            true,
        )
    }

    fn chromium(args: &[&str]) -> std::process::Output {
        let script = workspace_root().join("scripts/chromium.sh");
        let output = Command::new(&script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} {}: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn out_dir() -> PathBuf {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from)
            .join("e2e/demo-report");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn layout(page: &Path) -> serde_json::Value {
        let html = std::fs::read_to_string(page).unwrap();
        let checked = page.with_extension("check.html");
        std::fs::write(
            &checked,
            html.replace("</body>", &format!("{LAYOUT_CHECK}</body>")),
        )
        .unwrap();
        let dom =
            String::from_utf8(chromium(&["dump-dom", checked.to_str().unwrap()]).stdout).unwrap();
        let start = dom.find(r#"<pre id="layout-check">"#).unwrap_or_else(|| {
            panic!("no layout check result in the DOM of {}", checked.display())
        });
        let json = &dom[start + r#"<pre id="layout-check">"#.len()..];
        let json = &json[..json.find("</pre>").unwrap()];
        let json = json
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    #[test]
    fn the_report_lays_out_cleanly_in_chromium() {
        for (run, name) in [
            (Run::Healthy, "healthy"),
            (Run::Faulty, "faulty"),
            (Run::Slow, "slow"),
        ] {
            let page = out_dir().join(format!("{name}.html"));
            std::fs::write(&page, report(run)).unwrap();
            let found = layout(&page);
            let problems = found["problems"].as_array().unwrap();
            assert!(problems.is_empty(), "{name}: {problems:#?}");
            let viewport = found["viewport"].as_f64().unwrap();
            assert!(
                found["pageWidth"].as_f64().unwrap() <= viewport,
                "{name}: the page scrolls sideways: {found}"
            );
            let charts = found["charts"].as_array().unwrap();
            assert_eq!(charts.len(), 3, "{found}");
            for chart in charts {
                // The body's margins aside, the charts take the window's width.
                assert!(
                    chart["width"].as_f64().unwrap() >= 0.9 * viewport,
                    "{name}: {chart} in a {viewport} px window"
                );
            }
            let p99 = charts.iter().find(|c| c["name"] == "p99").unwrap();
            assert!(
                p99["tallestSeries"].as_f64().unwrap() >= 0.4,
                "{name}: the P99 lines use less than 40% of the chart's height: {p99}"
            );
            // One screenshot of the whole page, to look at.
            let png = page.with_extension("png");
            std::env::set_var("CHROMIUM_WINDOW", "1400,2000");
            chromium(&["screenshot", page.to_str().unwrap(), png.to_str().unwrap()]);
            assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
        }
    }

    #[test]
    fn axis_values_keep_their_digits() {
        let shown: Vec<String> = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 100.0, 2.5]
            .into_iter()
            .map(fmt_num)
            .collect();
        assert_eq!(
            shown,
            ["0", "0.25", "0.5", "0.75", "1", "1.25", "100", "2.5"]
        );
    }

    #[test]
    fn the_p99_axis_follows_the_data_and_the_threshold_when_close() {
        // A few ms against 500: the axis is the data's, the threshold is named above it.
        assert_eq!(p99_axis_max(7.4, Some(500.0)), 10.0);
        // Close to the threshold: both fit.
        assert_eq!(p99_axis_max(420.0, Some(500.0)), 600.0);
        assert_eq!(p99_axis_max(800.0, Some(500.0)), 1000.0);
        // No data yet: a small axis of its own, not 0..0.
        assert_eq!(p99_axis_max(0.0, None), 1.25);
    }
}
