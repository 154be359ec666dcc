//! The soak chart (`target/soak/soak.png`): two panels over the run's minutes, the proxy's
//! RSS and its open file descriptors. One line per serving process (the first in blue, the
//! one the binary upgrade started in green), the old process's drain in grey; vertical
//! lines mark each SIGHUP (grey), the upgrade (red) and the old process's exit (orange).
//! Drawn like the bench chart (`bench::chart`: plotters' bitmap backend, DejaVu Sans).

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::prelude::*;

use super::samples::{Event, Mark, Sample};
use crate::bench::chart::{font, FAMILY};

const SIZE: (u32, u32) = (1400, 900);
const PROCESS: [RGBColor; 2] = [RGBColor(31, 91, 180), RGBColor(40, 150, 70)];
const DRAINING: RGBColor = RGBColor(150, 150, 150);

/// Draws both panels into `path`; `subtitle` says what ran, where and when.
pub fn draw(samples: &[Sample], events: &[Event], subtitle: &str, path: &Path) -> Result<()> {
    font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(60);
    head.draw(&Text::new(
        "Soak: switchyard RSS and open file descriptors over time",
        (12, 6),
        (FAMILY, 22).into_font(),
    ))?;
    head.draw(&Text::new(
        subtitle.to_owned(),
        (12, 35),
        (FAMILY, 14).into_font().color(&RGBColor(90, 90, 90)),
    ))?;
    let (top, bottom) = body.split_vertically((SIZE.1 - 60) / 2);
    panel(
        &top,
        samples,
        events,
        "RSS, MiB",
        |kb| kb as f64 / 1024.0,
        |s| s.rss_kb,
        |o| o.1,
    )?;
    panel(
        &bottom,
        samples,
        events,
        "open fds",
        |n| n as f64,
        |s| s.fds,
        |o| o.2,
    )?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// One panel: `value` of the serving process per pid, `old` of the draining one, marks.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    samples: &[Sample],
    events: &[Event],
    what: &str,
    scale: fn(u64) -> f64,
    value: fn(&Sample) -> u64,
    old: fn(&(u32, u64, u64)) -> u64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let minutes = |t: f64| t / 60.0;
    let samples: Vec<&Sample> = samples.iter().filter(|s| !s.after_stop).collect();
    let x_max = samples.last().map_or(1.0, |s| minutes(s.t)).max(0.1);
    let y_max = samples
        .iter()
        .flat_map(|s| [value(s), s.old.as_ref().map_or(0, old)])
        .map(scale)
        .fold(1.0f64, f64::max)
        * 1.15;
    let err = |e: &dyn std::fmt::Display| anyhow!("{what}: {e}");
    let mut chart = ChartBuilder::on(area)
        .caption(what, (FAMILY, 17))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(242, 242, 242))
        .x_desc("minutes")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    let mut pids: Vec<u32> = Vec::new();
    for s in &samples {
        if !pids.contains(&s.pid) {
            pids.push(s.pid);
        }
    }
    for (i, pid) in pids.iter().enumerate() {
        let colour = PROCESS[i.min(PROCESS.len() - 1)];
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.pid == *pid)
            .map(|s| (minutes(s.t), scale(value(s))))
            .collect();
        let label = match i {
            0 => format!("pid {pid} (first)"),
            _ => format!("pid {pid} (after the upgrade)"),
        };
        chart
            .draw_series(std::iter::once(PathElement::new(
                points,
                colour.stroke_width(2),
            )))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    // From the old process's last sample as the serving one, through its drain.
    let from = match pids.as_slice() {
        [first, _, ..] => samples.iter().rev().find(|s| s.pid == *first),
        _ => None,
    };
    let draining: Vec<(f64, f64)> = from
        .map(|s| (minutes(s.t), scale(value(s))))
        .into_iter()
        .chain(
            samples
                .iter()
                .filter_map(|s| Some((minutes(s.t), scale(old(s.old.as_ref()?))))),
        )
        .collect();
    if draining.len() > 1 {
        chart
            .draw_series(
                draining
                    .iter()
                    .skip(1)
                    .map(|p| Circle::new(*p, 3, DRAINING.filled())),
            )
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                draining,
                DRAINING.stroke_width(2),
            )))
            .map_err(|e| err(&e))?
            .label("old process, draining")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], DRAINING.stroke_width(2)));
    }
    for (mark, colour, label) in [
        (Mark::Hup, RGBColor(150, 90, 190), "SIGHUP"),
        (Mark::Upgrade, RGBColor(210, 40, 40), "binary upgrade"),
        (Mark::OldExit, RGBColor(230, 140, 30), "old process exited"),
    ] {
        let lines: Vec<f64> = events
            .iter()
            .filter(|e| e.mark == mark)
            .map(|e| minutes(e.t))
            .collect();
        if lines.is_empty() {
            continue;
        }
        chart
            .draw_series(
                lines
                    .into_iter()
                    .map(|x| PathElement::new([(x, 0.0), (x, y_max)], colour.stroke_width(2))),
            )
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}
