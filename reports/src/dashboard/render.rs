//! Drawing panels with plotters: the same drawing code for SVG (inline in pages) and PNG (bitmap backend).
//!
//! Text is laid out with the DejaVu Sans font embedded in this crate (`reports/assets/`, Bitstream Vera license),
//! through plotters' `ab_glyph` feature, so nothing needs system fonts (fontconfig/freetype are not linked). SVG text
//! names the family `sans-serif`, which browsers have.
//!
//! An SVG's root carries what a reader or a test needs without parsing the drawing: `data-panel`, `data-chart`,
//! `data-state` (`ok`, `empty`, `problem`), `data-series` (series drawn; 1 for a single value; 0 for tables and empty
//! panels), `data-points` and `data-version` (the report run drawn). The size is a `viewBox` only, so CSS scales it.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::config::{ChartKind, PanelConfig};
use super::data::{PanelData, X, XKind};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();

/// Family name the embedded font is registered under (and that SVG text asks the browser for).
const FAMILY: &str = "sans-serif";

/// PNG sizes accepted, in pixels, both sides.
pub const PNG_SIDE_MIN: u32 = 64;
pub const PNG_SIDE_MAX: u32 = 4096;
/// The logical size of inline SVG panels (scaled by CSS through the viewBox).
pub const SVG_SIZE: (u32, u32) = (800, 360);

fn ensure_font() {
    FONT_ONCE.call_once(|| {
        // The font is compiled in; a failure here is a broken build, and text would then be missing, not fatal.
        if register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::error!("the embedded dashboard font did not load");
        }
    });
}

/// Tableau-like colours, distinguishable and readable on white.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(57, 59, 121),
    RGBColor(173, 73, 74),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A number for an axis or a single value: integers plain, others with up to three significant decimals.
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 1e9 || (a != 0.0 && a < 1e-3) {
        return format!("{v:.3e}");
    }
    if (v - v.round()).abs() < 1e-9 {
        return format!("{}", v.round() as i64);
    }
    let decimals = if a >= 100.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The unit a time axis counts in for a span: ticks fall on whole (or nicely divided) seconds, minutes, hours or
/// days of UTC, because the axis coordinates are that unit since the epoch.
pub fn time_unit_ms(span_ms: f64) -> f64 {
    const MINUTE: f64 = 60_000.0;
    const HOUR: f64 = 60.0 * MINUTE;
    const DAY: f64 = 24.0 * HOUR;
    if span_ms <= 2.0 * MINUTE {
        1_000.0
    } else if span_ms <= 3.0 * HOUR {
        MINUTE
    } else if span_ms <= 3.0 * DAY {
        HOUR
    } else {
        DAY
    }
}

/// A time axis label for `ms` on an axis spanning `span_ms`.
pub fn format_time(ms: f64, span_ms: f64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms.round() as i64) else {
        return String::new();
    };
    let day = 86_400_000.0;
    let pattern = if span_ms <= 10.0 * 60_000.0 {
        "%H:%M:%S"
    } else if span_ms <= 1.5 * day {
        "%H:%M"
    } else if span_ms <= 60.0 * day {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d"
    };
    t.format(pattern).to_string()
}

/// Keep at most about `4 * buckets` points of a sorted series: per bucket of x, the first, lowest, highest and last
/// point, so the drawn line keeps its shape (peaks included) while the SVG stays small.
pub fn decimate(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    if points.len() <= buckets * 4 || buckets == 0 {
        return points.to_vec();
    }
    let (x0, x1) = (points[0].0, points[points.len() - 1].0);
    let width = (x1 - x0) / buckets as f64;
    if width <= 0.0 || !width.is_finite() {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(buckets * 4);
    let mut start = 0;
    while start < points.len() {
        let bucket = (((points[start].0 - x0) / width) as usize).min(buckets - 1);
        let mut end = start;
        while end < points.len() && (((points[end].0 - x0) / width) as usize).min(buckets - 1) == bucket {
            end += 1;
        }
        let slice = &points[start..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in slice.iter().enumerate() {
            if p.1 < slice[lo].1 {
                lo = i;
            }
            if p.1 > slice[hi].1 {
                hi = i;
            }
        }
        let mut keep = [0, lo.min(hi), lo.max(hi), slice.len() - 1];
        keep.sort_unstable();
        let mut last = usize::MAX;
        for k in keep {
            if k != last {
                out.push(slice[k]);
                last = k;
            }
        }
        start = end;
    }
    out
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn title(panel: &PanelConfig) -> String {
    let t = if panel.title.is_empty() {
        &panel.name
    } else {
        &panel.title
    };
    match &panel.unit {
        Some(u) if !matches!(panel.chart, ChartKind::SingleValue | ChartKind::Table) => format!("{t} ({u})"),
        _ => t.clone(),
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_message<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    lines: &[String],
    colour: RGBColor,
) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    let style =
        TextStyle::from((FAMILY, 16).into_font())
            .color(&colour)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ));
    let top = h as i32 / 2 - (lines.len() as i32 * 20) / 2;
    for (i, line) in lines.iter().enumerate() {
        root.draw(&Text::new(
            line.clone(),
            (w as i32 / 2, top + i as i32 * 20),
            style.clone(),
        ))?;
    }
    Ok(())
}

/// Split `text` into lines of about `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().unwrap();
        if !line.is_empty() && line.chars().count() + word.chars().count() + 1 > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines.truncate(8);
    lines
}

fn draw_panel<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panel: &PanelConfig,
    data: &PanelData,
) -> DrawResult<DB> {
    ensure_font();
    root.fill(&WHITE)?;
    let (w, h) = root.dim_in_pixel();
    let title_px = (h / 18).clamp(14, 28);
    let (head, body) = root.split_vertically(title_px + 14);
    head.draw(&Text::new(
        title(panel),
        (10, 8),
        TextStyle::from((FAMILY, title_px).into_font()).color(&BLACK),
    ))?;
    match data {
        PanelData::Empty { message } => {
            draw_message(&body, std::slice::from_ref(message), RGBColor(110, 110, 110))
        }
        PanelData::Problem { message } => draw_message(
            &body,
            &wrap(message, (w as usize / 9).max(20)),
            RGBColor(180, 30, 30),
        ),
        PanelData::SingleValue { value, at } => {
            let big = (h / 4).clamp(18, 160);
            let mut text = format_number(*value);
            if let Some(u) = &panel.unit {
                text = format!("{text} {u}");
            }
            let centre = plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            );
            let (bw, bh) = body.dim_in_pixel();
            body.draw(&Text::new(
                text,
                (bw as i32 / 2, bh as i32 / 2 - 10),
                TextStyle::from((FAMILY, big).into_font())
                    .color(&colour(0))
                    .pos(centre),
            ))?;
            let at = match at {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.draw(&Text::new(
                format!("at {at}"),
                (bw as i32 / 2, bh as i32 / 2 + big as i32 / 2 + 8),
                TextStyle::from((FAMILY, 13).into_font())
                    .color(&RGBColor(110, 110, 110))
                    .pos(centre),
            ))?;
            Ok(())
        }
        PanelData::Table {
            columns,
            rows,
            rows_total,
        } => {
            let (bw, bh) = body.dim_in_pixel();
            let row_px = 20i32;
            let cell_text = |v: &serde_json::Value| match v {
                serde_json::Value::Number(n) => n.as_f64().map(format_number).unwrap_or_default(),
                serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|_| s.clone()),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            let fit = ((bh as i32 - row_px - 24) / row_px).max(0) as usize;
            let texts: Vec<Vec<String>> = rows
                .iter()
                .take(fit)
                .map(|r| r.iter().map(cell_text).collect())
                .collect();
            // Column widths in proportion to their longest text (capped), so timestamps get room.
            let chars: Vec<usize> = (0..columns.len())
                .map(|c| {
                    texts
                        .iter()
                        .map(|r| r.get(c).map_or(0, |t| t.chars().count()))
                        .chain(std::iter::once(columns[c].chars().count()))
                        .max()
                        .unwrap_or(1)
                        .clamp(4, 32)
                        + 2
                })
                .collect();
            let total: usize = chars.iter().sum::<usize>().max(1);
            let mut lefts = Vec::with_capacity(columns.len());
            let mut left = 10i32;
            for c in &chars {
                lefts.push(left);
                left += ((bw as i32 - 20) as f64 * *c as f64 / total as f64) as i32;
            }
            let header = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
            let cell = TextStyle::from((FAMILY, 13).into_font()).color(&RGBColor(40, 40, 40));
            for (c, name) in columns.iter().enumerate() {
                body.draw(&Text::new(name.clone(), (lefts[c], 4), header.clone()))?;
            }
            body.draw(&PathElement::new(
                vec![(10, row_px), (bw as i32 - 10, row_px)],
                BLACK.mix(0.4),
            ))?;
            for (r, row) in texts.iter().enumerate() {
                let y = row_px + 4 + r as i32 * row_px;
                if r % 2 == 1 {
                    body.draw(&Rectangle::new(
                        [(10, y - 2), (bw as i32 - 10, y + row_px - 2)],
                        RGBColor(243, 245, 248).filled(),
                    ))?;
                }
                for (c, text) in row.iter().enumerate() {
                    body.draw(&Text::new(text.clone(), (lefts[c], y), cell.clone()))?;
                }
            }
            body.draw(&Text::new(
                format!("newest {} of {rows_total} rows", texts.len()),
                (10, bh as i32 - 18),
                TextStyle::from((FAMILY, 11).into_font()).color(&RGBColor(110, 110, 110)),
            ))?;
            Ok(())
        }
        PanelData::Chart {
            x_kind,
            categories,
            series,
            series_dropped,
        } => draw_chart(&body, panel, *x_kind, categories, series, *series_dropped),
    }
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &PanelConfig,
    x_kind: XKind,
    categories: &[String],
    series: &[super::data::Series],
    series_dropped: usize,
) -> DrawResult<DB> {
    let (w, _) = area.dim_in_pixel();
    let bar = panel.chart == ChartKind::Bar;
    let mut y_lo = f64::INFINITY;
    let mut y_hi = f64::NEG_INFINITY;
    let mut x_lo = f64::INFINITY;
    let mut x_hi = f64::NEG_INFINITY;
    for s in series {
        for (x, y) in &s.points {
            y_lo = y_lo.min(*y);
            y_hi = y_hi.max(*y);
            let xv = x.as_f64();
            x_lo = x_lo.min(xv);
            x_hi = x_hi.max(xv);
        }
    }
    if !y_lo.is_finite() {
        return draw_message(area, &["no data yet".to_string()], RGBColor(110, 110, 110));
    }
    if bar || panel.chart == ChartKind::Area {
        y_lo = y_lo.min(0.0);
        y_hi = y_hi.max(0.0);
    }
    if y_hi - y_lo < 1e-12 {
        y_lo -= 1.0;
        y_hi += 1.0;
    } else {
        let pad = (y_hi - y_lo) * 0.05;
        if y_lo != 0.0 {
            y_lo -= pad;
        }
        y_hi += pad;
    }
    if bar {
        x_lo = -0.5;
        x_hi = categories.len() as f64 - 0.5;
    } else if x_hi - x_lo < 1e-9 {
        let pad = if x_kind == XKind::Time { 30_000.0 } else { 1.0 };
        x_lo -= pad;
        x_hi += pad;
    }
    // Time axes count in a unit (s, min, h, day) since the epoch so that ticks land on round times.
    let unit = if x_kind == XKind::Time && !bar {
        time_unit_ms(x_hi - x_lo)
    } else {
        1.0
    };
    let span = x_hi - x_lo;
    let (x_lo, x_hi) = (x_lo / unit, x_hi / unit);
    let x_fmt = |v: &f64| -> String {
        if bar {
            let i = v.round();
            if (v - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            categories.get(i as usize).cloned().unwrap_or_default()
        } else if x_kind == XKind::Time {
            format_time(*v * unit, span)
        } else {
            format_number(*v)
        }
    };
    let y_fmt = |v: &f64| format_number(*v);
    let mut chart = ChartBuilder::on(area)
        .margin_left(8)
        .margin_right(16)
        .margin_bottom(6)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    let x_labels = if bar {
        categories.len().min(12)
    } else {
        (w as usize / 110).clamp(3, 10)
    };
    let x_desc = if x_kind == XKind::Time {
        format!("{} (UTC)", panel.x)
    } else {
        panel.x.clone()
    };
    chart
        .configure_mesh()
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(x_labels)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FAMILY, 12))
        .x_desc(x_desc)
        .axis_desc_style((FAMILY, 12))
        .draw()?;
    // Lines are decimated to the plotting area's pixels (first, lowest, highest and last point of every two pixel
    // columns): a 2 px stroke looks the same, and the SVG writes no points that would land on the same pixels.
    let buckets = (chart.plotting_area().dim_in_pixel().0 as usize / 2).max(50);
    let n = series.len().max(1);
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        let points: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| (x.as_f64() / unit, *y)).collect();
        let drawn = match panel.chart {
            ChartKind::Bar => {
                let slot = 0.8 / n as f64;
                let rects: Vec<Rectangle<(f64, f64)>> = s
                    .points
                    .iter()
                    .filter_map(|(x, y)| {
                        let X::Category(cat) = x else { return None };
                        let at = categories.iter().position(|c| c == cat)? as f64;
                        let left = at - 0.4 + slot * i as f64;
                        Some(Rectangle::new(
                            [(left, 0.0), (left + slot * 0.92, *y)],
                            c.filled(),
                        ))
                    })
                    .collect();
                chart.draw_series(rects)?
            }
            ChartKind::Area => {
                let base = y_lo.max(0.0).min(y_hi);
                chart.draw_series(
                    AreaSeries::new(decimate(&points, buckets), base, c.mix(0.08))
                        .border_style(c.stroke_width(2)),
                )?
            }
            _ => chart.draw_series(LineSeries::new(decimate(&points, buckets), c.stroke_width(2)))?,
        };
        drawn
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    if series.len() > 1 || panel.series.is_some() || series_dropped > 0 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.25))
            .label_font((FAMILY, 12))
            .draw()?;
    }
    if series_dropped > 0 {
        area.draw(&Text::new(
            format!("{series_dropped} more series not drawn"),
            (70, 4),
            TextStyle::from((FAMILY, 11).into_font()).color(&RGBColor(180, 30, 30)),
        ))?;
    }
    Ok(())
}

/// The panel as an inline SVG element (root `<svg>` with the data attributes, sized by its viewBox).
pub fn svg(panel: &PanelConfig, data: &PanelData, version: Option<&str>) -> String {
    let (w, h) = SVG_SIZE;
    let mut out = String::with_capacity(64 * 1024);
    let drawn = {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        draw_panel(root.clone(), panel, data).and_then(|()| root.present())
    };
    let data_fallback;
    let (data, body) = match drawn {
        Ok(()) => (data, out),
        Err(e) => {
            // Drawing failed (a plotters limit, not the caller's input): the panel says so.
            data_fallback = PanelData::Problem {
                message: format!("drawing failed: {e}"),
            };
            let mut again = String::new();
            {
                let root = SVGBackend::with_string(&mut again, (w, h)).into_drawing_area();
                let _ = draw_panel(root.clone(), panel, &data_fallback).and_then(|()| root.present());
            }
            (&data_fallback, again)
        }
    };
    let attrs = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" data-panel=\"{}\" data-chart=\"{}\" data-state=\"{}\" \
         data-series=\"{}\" data-points=\"{}\" data-version=\"{}\" preserveAspectRatio=\"xMidYMid meet\" ",
        escape_attr(&title(panel)),
        escape_attr(&panel.name),
        panel.chart.as_str(),
        data.state(),
        data.series_count(),
        data.point_count(),
        escape_attr(version.unwrap_or("")),
    );
    let prefix = format!("<svg width=\"{w}\" height=\"{h}\" ");
    match body.strip_prefix(&prefix) {
        Some(rest) => format!("{attrs}{rest}"),
        None => body,
    }
}

/// The panel as a PNG of `width` × `height` pixels (the caller checks the bounds).
pub fn png(panel: &PanelConfig, data: &PanelData, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw_panel(root.clone(), panel, data)
            .and_then(|()| root.present())
            .map_err(|e| format!("drawing failed: {e}"))?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .map_err(|e| format!("encoding PNG: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_well() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(21.456), "21.46");
        assert_eq!(format_number(0.1234), "0.123");
        assert_eq!(format_number(1234.56), "1234.6");
        assert_eq!(format_time(1_700_000_000_000.0, 3_600_000.0), "22:13");
        assert_eq!(format_time(1_700_000_000_000.0, 240_000.0), "22:13:20");
        assert_eq!(time_unit_ms(240_000.0), 60_000.0);
        assert_eq!(
            format_time(1_700_000_000_000.0, 10.0 * 86_400_000.0),
            "11-14 22:13"
        );
    }

    #[test]
    fn decimation_keeps_peaks_and_ends() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 5_000 { 100.0 } else { 0.0 }))
            .collect();
        let kept = decimate(&points, 100);
        assert!(kept.len() <= 400, "{}", kept.len());
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        assert!(kept.contains(&(5_000.0, 100.0)));
    }
}
