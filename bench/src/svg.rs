//! Charts as plain SVG text: horizontal grouped bars, one group per system,
//! linear or logarithmic axes, value labels on the bars. Written by hand
//! (a few rectangles and text elements) rather than with a plotting crate,
//! so the bench adds no dependency to the workspace.

use std::fmt::Write as _;

use crate::report::{Results, rate_summary, search_summary};
use crate::sut::Sut;

/// One bar.
struct Bar {
    value: Option<f64>,
    label: String,
}

/// The bars of one system in one panel (one per series).
struct Group {
    name: String,
    bars: Vec<Bar>,
}

/// One chart panel.
struct Panel {
    title: String,
    unit: String,
    log: bool,
    groups: Vec<Group>,
}

const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];
const WIDTH: f64 = 920.0;
const LABEL_W: f64 = 260.0;
const PLOT_W: f64 = 540.0;
const BAR_H: f64 = 13.0;
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 10.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axis ticks: powers of ten (log) or 1/2/5 steps (linear).
fn ticks(min: f64, max: f64, log: bool) -> Vec<f64> {
    if log {
        let mut t = Vec::new();
        let mut v = 10f64.powf(min.log10().floor());
        while v <= max * 1.0001 {
            if v >= min * 0.9999 {
                t.push(v);
            }
            v *= 10.0;
        }
        t
    } else {
        let raw = max / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(raw);
        (0..=((max / step).floor() as usize))
            .map(|i| i as f64 * step)
            .collect()
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

fn render(title: &str, subtitle: &str, series: &[&str], panels: &[Panel]) -> String {
    let mut body = String::new();
    let mut y = 58.0;
    // Legend.
    let mut x = 10.0;
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            body,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" class="s">{}</text>"#,
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            esc(s)
        );
        x += 24.0 + 7.0 * s.chars().count() as f64;
    }
    y += 18.0;
    for panel in panels {
        y += 18.0;
        let _ = write!(
            body,
            r#"<text x="10" y="{y}" class="h">{}</text>"#,
            esc(&panel.title)
        );
        y += 10.0;
        let values: Vec<f64> = panel
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().filter_map(|b| b.value))
            .filter(|v| *v > 0.0)
            .collect();
        let vmax = values.iter().copied().fold(0.0, f64::max).max(1e-9);
        let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
        let (lo, hi) = if panel.log {
            (
                10f64.powf(vmin.min(vmax).log10().floor()),
                10f64.powf(vmax.log10().ceil()),
            )
        } else {
            let t = ticks(0.0, vmax * 1.1, false);
            let step = t.get(1).copied().unwrap_or(vmax);
            (0.0, (vmax * 1.1 / step).ceil() * step)
        };
        let xpos = |v: f64| -> f64 {
            let f = if panel.log {
                (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10())
            } else {
                v / hi
            };
            LABEL_W + f.clamp(0.0, 1.0) * PLOT_W
        };
        let top = y;
        for group in &panel.groups {
            let n = group.bars.len() as f64;
            let h = n * BAR_H + (n - 1.0).max(0.0) * BAR_GAP;
            let _ = write!(
                body,
                r#"<text x="{}" y="{}" class="g" text-anchor="end">{}</text>"#,
                LABEL_W - 8.0,
                y + h / 2.0 + 4.0,
                esc(&group.name)
            );
            for (i, bar) in group.bars.iter().enumerate() {
                let by = y + i as f64 * (BAR_H + BAR_GAP);
                match bar.value {
                    Some(v) if v > 0.0 => {
                        let w = (xpos(v) - LABEL_W).max(1.0);
                        let _ = write!(
                            body,
                            r#"<rect x="{LABEL_W}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{}"/><text x="{:.1}" y="{}" class="v">{}</text>"#,
                            COLORS[i % COLORS.len()],
                            LABEL_W + w + 4.0,
                            by + BAR_H - 2.5,
                            esc(&bar.label)
                        );
                    }
                    _ => {
                        let _ = write!(
                            body,
                            r#"<text x="{}" y="{}" class="v">{}</text>"#,
                            LABEL_W + 4.0,
                            by + BAR_H - 2.5,
                            esc(if bar.label.is_empty() {
                                "—"
                            } else {
                                &bar.label
                            })
                        );
                    }
                }
            }
            y += h + GROUP_GAP;
        }
        // Axis and grid.
        let bottom = y - GROUP_GAP + 4.0;
        for t in ticks(if panel.log { lo } else { 0.0 }, hi, panel.log) {
            let tx = xpos(t);
            let _ = write!(
                body,
                r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{bottom}" stroke="#ccc" stroke-width="0.6"/><text x="{tx:.1}" y="{}" class="t" text-anchor="middle">{}</text>"##,
                top - 4.0,
                bottom + 13.0,
                fmt_tick(t)
            );
        }
        let _ = write!(
            body,
            r##"<line x1="{LABEL_W}" y1="{}" x2="{LABEL_W}" y2="{bottom}" stroke="#333"/><text x="{}" y="{}" class="t" text-anchor="middle">{}</text>"##,
            top - 4.0,
            LABEL_W + PLOT_W / 2.0,
            bottom + 27.0,
            esc(&format!(
                "{}{}",
                panel.unit,
                if panel.log { " (log scale)" } else { "" }
            ))
        );
        y = bottom + 36.0;
    }
    let height = y + 10.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<style>.h{{font-size:14px;font-weight:bold}}.s{{font-size:12px}}.g{{font-size:12px}}.v{{font-size:11px;fill:#222}}.t{{font-size:10px;fill:#555}}.title{{font-size:17px;font-weight:bold}}.sub{{font-size:11px;fill:#555}}</style>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" class="title">{}</text><text x="10" y="38" class="sub">{}</text>
{body}
</svg>
"##,
        esc(title),
        esc(subtitle)
    )
}

/// Milliseconds with about three significant digits.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn suts(results: &Results) -> Vec<Sut> {
    Sut::ALL
        .into_iter()
        .filter(|s| results.runs.iter().any(|r| r.sut == *s))
        .collect()
}

fn bar(value: Option<f64>, label: impl FnOnce(f64) -> String) -> Bar {
    Bar {
        value,
        label: value.map(label).unwrap_or_default(),
    }
}

/// The charts of a run: (file name, SVG).
pub fn charts(results: &Results) -> Vec<(&'static str, String)> {
    let suts = suts(results);
    let subtitle = format!(
        "{} · {} cores · {} · one mosquitto, one subscriber, all on the same cores",
        results.machine.date, results.machine.cores, results.machine.cpu
    );
    let mut charts = Vec::new();

    let throughput = Panel {
        title: "Zero-loss throughput, median of the rounds (frames/s; 11 MQTT messages each)"
            .into(),
        unit: "frames/s".into(),
        log: false,
        groups: suts
            .iter()
            .map(|&sut| {
                let q1 = search_summary(results, "search-qos1", sut);
                let q0 = search_summary(results, "search-qos0", sut);
                let mut bars = vec![
                    bar(q1.as_ref().and_then(|s| s.sustained), |v| format!("{v:.0}")),
                    bar(q1.as_ref().map(|s| s.burst_rate), |v| format!("{v:.0}")),
                ];
                if results.runs.iter().any(|r| r.phase == "search-qos0") {
                    bars.push(bar(q0.as_ref().and_then(|s| s.sustained), |v| {
                        format!("{v:.0}")
                    }));
                }
                Group {
                    name: sut.label().into(),
                    bars,
                }
            })
            .collect(),
    };
    charts.push((
        "throughput.svg",
        render(
            "sluice vs Node-RED, Python and a bare publisher: throughput",
            &subtitle,
            &[
                "sustained, QoS 1 (fixed rate, zero loss)",
                "burst, QoS 1",
                "sustained, QoS 0",
            ],
            &[throughput],
        ),
    ));

    let latency_panels: Vec<Panel> = [
        ("rate-100", "100 frames/s"),
        ("rate-1000", "1000 frames/s"),
        ("rate-10000", "10,000 frames/s"),
    ]
    .into_iter()
    .filter(|(phase, _)| results.runs.iter().any(|r| r.phase == *phase))
    .map(|(phase, title)| Panel {
        title: format!(
            "Latency at {title}, QoS 1: write → the frame's last message (all rounds pooled)"
        ),
        unit: "milliseconds".into(),
        log: true,
        groups: suts
            .iter()
            .map(|&sut| {
                let s = rate_summary(results, phase, sut);
                let l = s.as_ref().and_then(|s| s.latency);
                let kept = s.as_ref().is_some_and(|s| s.kept_up);
                let name = if kept || s.is_none() {
                    sut.label().to_owned()
                } else {
                    format!("{} (not kept up)", sut.label())
                };
                Group {
                    name,
                    bars: vec![
                        bar(l.map(|l| l.p50), ms),
                        bar(l.map(|l| l.p99), ms),
                        bar(l.map(|l| l.p999), ms),
                    ],
                }
            })
            .collect(),
    })
    .collect();
    charts.push((
        "latency.svg",
        render(
            "sluice vs Node-RED, Python and a bare publisher: latency",
            &subtitle,
            &["p50", "p99", "p99.9"],
            &latency_panels,
        ),
    ));

    let at_1000: Vec<(Sut, Option<crate::report::RateSummary>)> = suts
        .iter()
        .map(|&sut| (sut, rate_summary(results, "rate-1000", sut)))
        .collect();
    let resources = vec![
        Panel {
            title: "CPU time per frame at 1000 frames/s (system under test only)".into(),
            unit: "µs of CPU per frame (utime + stime)".into(),
            log: false,
            groups: at_1000
                .iter()
                .map(|(sut, s)| Group {
                    name: sut.label().into(),
                    bars: vec![bar(s.as_ref().map(|s| s.cpu_us_per_frame), |v| {
                        format!("{v:.1} µs")
                    })],
                })
                .collect(),
        },
        Panel {
            title: "Memory at 1000 frames/s".into(),
            unit: "MiB".into(),
            log: false,
            groups: at_1000
                .iter()
                .map(|(sut, s)| Group {
                    name: sut.label().into(),
                    bars: vec![
                        bar(s.as_ref().map(|s| s.rss_mib), |v| format!("{v:.1}")),
                        bar(s.as_ref().map(|s| s.hwm_mib), |v| format!("{v:.1}")),
                    ],
                })
                .collect(),
        },
    ];
    charts.push((
        "resources.svg",
        render(
            "sluice vs Node-RED, Python and a bare publisher: CPU and memory",
            &subtitle,
            &["CPU µs/frame · steady RSS (VmRSS)", "peak RSS (VmHWM)"],
            &resources,
        ),
    ));
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_range() {
        assert_eq!(ticks(0.01, 100.0, true), vec![0.01, 0.1, 1.0, 10.0, 100.0]);
        assert_eq!(
            ticks(0.0, 5000.0, false),
            vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
        );
        assert_eq!(fmt_tick(0.01), "0.01");
        assert_eq!(fmt_tick(2000.0), "2k");
    }

    #[test]
    fn a_chart_is_well_formed_svg() {
        let svg = render(
            "t <&>",
            "s",
            &["a", "b"],
            &[Panel {
                title: "p".into(),
                unit: "ms".into(),
                log: true,
                groups: vec![
                    Group {
                        name: "x".into(),
                        bars: vec![
                            Bar {
                                value: Some(0.5),
                                label: "0.5".into(),
                            },
                            Bar {
                                value: None,
                                label: String::new(),
                            },
                        ],
                    },
                    Group {
                        name: "y".into(),
                        bars: vec![Bar {
                            value: Some(120.0),
                            label: "120".into(),
                        }],
                    },
                ],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 2, "{svg}");
    }
}
