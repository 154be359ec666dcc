//! The throughput chart of `cargo xtask bench` (`docs/benchmarks.png`): one PNG, four
//! panels of horizontal bars, one bar per peer — Gbit/s with one stream and with N streams
//! (median, the min–max of the runs as a whisker), and CPU seconds per GB moved for each
//! (the whole machine, with the peer's own processes as the darker inner bar).
//!
//! Drawn with plotters' bitmap backend; text is rendered with ab_glyph from DejaVu Sans
//! (Debian's `fonts-dejavu-core`, installed with the bench's other peers), loaded at run
//! time so nothing binary is embedded in the xtask.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Where Debian's `fonts-dejavu-core` puts the font.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The font family name the chart asks plotters for.
pub(crate) const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1500, 860);

/// One peer under one load, as the chart shows it.
pub struct Bar {
    pub streams: usize,
    pub via: &'static str,
    /// Gbit/s: median, min, max over the runs.
    pub gbit: (f64, f64, f64),
    pub peer_cpu_per_gb: f64,
    pub machine_cpu_per_gb: f64,
}

/// Registers DejaVu Sans with plotters once per process.
pub(crate) fn font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT}: not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Colour of a peer's bar: Switchyard's three relays in blues, the others in greys/greens.
fn colour(via: &str) -> RGBColor {
    match via {
        v if v.starts_with("direct") => RGBColor(120, 120, 120),
        v if v.contains("kernel") => RGBColor(31, 91, 180),
        v if v.contains("splice") => RGBColor(66, 146, 214),
        v if v.starts_with("switchyard") => RGBColor(140, 190, 235),
        v if v.starts_with("haproxy") => RGBColor(214, 120, 40),
        _ => RGBColor(60, 160, 90),
    }
}

/// Draws the four panels into `path`; `subtitle` says when and where it was measured.
pub fn draw(bars: &[Bar], streams: usize, subtitle: &str, path: &Path) -> Result<()> {
    font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(56);
    head.draw(&Text::new(
        "Throughput through a TLS passthrough route (loopback)",
        (12, 6),
        (FAMILY, 22).into_font(),
    ))?;
    head.draw(&Text::new(
        subtitle.to_owned(),
        (12, 33),
        (FAMILY, 14).into_font().color(&RGBColor(90, 90, 90)),
    ))?;
    let panels = body.split_evenly((2, 2));
    for (i, n) in [1, streams].into_iter().enumerate() {
        let rows: Vec<&Bar> = bars.iter().filter(|b| b.streams == n).collect();
        let label = if n == 1 {
            "1 stream".to_owned()
        } else {
            format!("{n} streams")
        };
        panel(
            &panels[2 * i],
            &rows,
            &format!("{label}: Gbit/s (median, whisker min–max)"),
            |b| b.gbit,
            None,
        )?;
        panel(
            &panels[2 * i + 1],
            &rows,
            &format!("{label}: CPU s/GB, machine (inner: the peer's own)"),
            |b| {
                let m = b.machine_cpu_per_gb;
                (m, m, m)
            },
            Some(|b: &Bar| b.peer_cpu_per_gb),
        )?;
    }
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// One panel: a bar per row, `value` (median, min, max) and optionally an inner bar.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&Bar],
    title: &str,
    value: fn(&Bar) -> (f64, f64, f64),
    inner: Option<fn(&Bar) -> f64>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = rows
        .iter()
        .map(|b| value(b).2)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.18;
    // The first row at the top: segment `last - i` holds row `i`.
    let last = rows.len().saturating_sub(1);
    let names: Vec<&'static str> = rows.iter().rev().map(|b| b.via).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 17))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(28)
        .y_label_area_size(220)
        .build_cartesian_2d(0.0..top, (0..last).into_segmented())
        .map_err(|e| anyhow!("{title}: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).copied().unwrap_or("").to_owned(),
            _ => String::new(),
        })
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| anyhow!("{title}: {e}"))?;
    let at = |i: usize| SegmentValue::Exact(last - i);
    let mid = |i: usize| SegmentValue::CenterOf(last - i);
    chart
        .draw_series(rows.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (0.0, at(i)),
                    (value(b).0, SegmentValue::Exact(last - i + 1)),
                ],
                colour(b.via).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(|e| anyhow!("{title}: {e}"))?;
    if let Some(inner) = inner {
        chart
            .draw_series(rows.iter().enumerate().map(|(i, b)| {
                let mut bar = Rectangle::new(
                    [(0.0, at(i)), (inner(b), SegmentValue::Exact(last - i + 1))],
                    RGBColor(20, 30, 60).mix(0.75).filled(),
                );
                bar.set_margin(11, 11, 0, 0);
                bar
            }))
            .map_err(|e| anyhow!("{title}: {e}"))?;
    }
    // Whiskers (min–max) where the runs differ, and the median as text at the bar's end.
    for (i, b) in rows.iter().enumerate() {
        let (median, min, max) = value(b);
        if max > min {
            let y = mid(i);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(min, y.clone()), (max, y)],
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| anyhow!("{title}: {e}"))?;
        }
        let text = match inner {
            Some(inner) => format!("{median:.2} ({:.2})", inner(b)),
            None => format!("{median:.1}"),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (max.max(median) + top * 0.01, mid(i)),
                TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )))
            .map_err(|e| anyhow!("{title}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_when_the_font_is_there() {
        if !Path::new(FONT).exists() {
            eprintln!("SKIPPED: {FONT} missing (apt-get install fonts-dejavu-core)");
            return;
        }
        let bar = |streams, via, g: f64| Bar {
            streams,
            via,
            gbit: (g, g * 0.9, g * 1.1),
            peer_cpu_per_gb: 0.1,
            machine_cpu_per_gb: 0.5,
        };
        let bars = [
            bar(1, "direct", 40.0),
            bar(1, "switchyard splice(2)", 20.0),
            bar(8, "direct", 80.0),
            bar(8, "switchyard splice(2)", 30.0),
        ];
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        draw(&bars, 8, "test", &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 10_000, "{} bytes", png.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
