//! Draws latency distributions (latency against percentile, one line per series) as an SVG
//! document, written as text: a "nines" percentile axis (`-log10(1 - p)`, so p90, p99, p99.9
//! and p99.99 are equally spaced and the tail gets the room), a log latency axis with 1-2-5
//! labels in us/ms/s, the legend beside the data and a caption under it. Pure: the figure in,
//! the document out; `zmesh bench` decides what the series and the caption say.

use std::fmt::Write as _;

/// The document's size; everything drawn stays inside it.
const WIDTH: f64 = 980.0;
/// Height without the caption; each caption line adds [`LINE`].
const BASE_HEIGHT: f64 = 520.0;
const LINE: f64 = 18.0;
const MARGIN: f64 = 14.0;
/// The plot area's left edge leaves room for the y labels ("500 us").
const PLOT_LEFT: f64 = 78.0;
const PLOT_TOP: f64 = 54.0;
const PLOT_BOTTOM: f64 = 460.0;
const FONT: f64 = 12.0;
const TITLE_FONT: f64 = 17.0;
/// Width of a character as a share of the font size: a generous average for sans-serif
/// digits and lower case (Helvetica's digits are 0.556), so estimated text boxes err large.
pub(crate) const CHAR_WIDTH: f64 = 0.6;
/// The percentile axis ends at p99.99 (four nines).
const MAX_NINES: f64 = 4.0;
/// Grid step on the percentile axis, in nines: 41 points from p0 to p99.99.
const STEP: f64 = 0.1;
/// Labelled percentiles and their tick labels.
const X_TICKS: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// One line of the figure.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Its name in the legend.
    pub(crate) name: String,
    /// A second legend line (such as the call count and the maximum).
    pub(crate) note: String,
    /// (percentile, microseconds), percentiles strictly increasing (see [`percentiles`]).
    pub(crate) points: Vec<(f64, f64)>,
}

/// What [`svg`] draws.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) title: String,
    pub(crate) series: Vec<Series>,
    /// Lines under the plot saying what was measured.
    pub(crate) caption: Vec<String>,
}

/// The percentiles a series of `samples` latencies is drawn at: every [`STEP`] nines from
/// p0, strictly increasing, up to p99.99 or to the highest percentile the samples resolve
/// (`1 - 1/samples`: 305 calls have no p99.9 of their own), whichever is lower. The maximum
/// is not a point (it would be a vertical spike at the axis' end): the legend states it.
pub(crate) fn percentiles(samples: u64) -> Vec<f64> {
    if samples == 0 {
        return Vec::new();
    }
    // Precision loss only above 2^53 samples, far past anything measured.
    #[allow(clippy::cast_precision_loss)]
    let end = (samples as f64).log10().min(MAX_NINES);
    let from_nines = |n: f64| 100.0 * (1.0 - 10f64.powf(-n));
    let mut nines: Vec<f64> = (0..)
        .map(|i| f64::from(i) * STEP)
        // Not a hair before the end either: two points a pixel apart read as a glitch.
        .take_while(|&n| n < end - STEP / 4.0)
        .collect();
    nines.push(end);
    nines.into_iter().map(from_nines).collect()
}

/// The figure as an SVG document.
pub(crate) fn svg(figure: &Figure) -> String {
    let legend = Legend::of(figure);
    let plot = Area {
        left: PLOT_LEFT,
        top: PLOT_TOP,
        right: legend.left - 2.0 * MARGIN,
        bottom: PLOT_BOTTOM,
    };
    let height = BASE_HEIGHT + LINE * caption_lines(figure);
    let y = YAxis::spanning(
        figure
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="{FONT}">"#
    );
    let _ = writeln!(w, r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(
        w,
        "title",
        WIDTH / 2.0,
        26.0,
        "middle",
        TITLE_FONT,
        &figure.title,
    );
    text(
        w,
        "y-title",
        MARGIN,
        PLOT_TOP - 12.0,
        "start",
        FONT,
        "latency (log scale)",
    );
    // Grid lines first, so the data is drawn over them.
    for (value, label) in &y.ticks {
        let value = *value;
        let py = plot.y(y.fraction(value));
        let _ = writeln!(
            w,
            r##"<line class="grid" x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            plot.left, plot.right
        );
        text(w, "y-tick", plot.left - 6.0, py + 4.0, "end", FONT, label);
    }
    for (percentile, label) in X_TICKS {
        let px = plot.x(nines(percentile) / MAX_NINES);
        let _ = writeln!(
            w,
            r##"<line class="grid" x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            plot.top, plot.bottom
        );
        text(w, "x-tick", px, plot.bottom + 18.0, "middle", FONT, label);
    }
    text(
        w,
        "x-title",
        (plot.left + plot.right) / 2.0,
        plot.bottom + 38.0,
        "middle",
        FONT,
        "percentile (spaced by nines: -log10(1 - p))",
    );
    let _ = writeln!(
        w,
        r##"<rect id="plot-area" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        plot.left,
        plot.top,
        plot.right - plot.left,
        plot.bottom - plot.top
    );
    for (series, colour) in figure.series.iter().zip(COLOURS.iter().cycle()) {
        let points = series
            .points
            .iter()
            .map(|&(q, us)| {
                format!(
                    "{:.1},{:.1}",
                    plot.x(nines(q) / MAX_NINES),
                    plot.y(y.fraction(us))
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            w,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round" points="{points}"/>"#,
            escape(&series.name)
        );
    }
    legend.draw(w, figure);
    let mut line_y = plot.bottom + 66.0;
    for line in &figure.caption {
        text(w, "caption", MARGIN, line_y, "start", FONT, line);
        line_y += LINE;
    }
    let _ = writeln!(w, "</svg>");
    out
}

/// How far along the percentile axis `percentile` lies, in nines.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0)
        .max(10f64.powf(-MAX_NINES))
        .log10()
}

#[allow(clippy::cast_precision_loss)]
fn caption_lines(figure: &Figure) -> f64 {
    figure.caption.len() as f64
}

/// Estimated width of `text` at `font` size.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn text_width(text: &str, font: f64) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH * font
}

fn text(w: &mut String, class: &str, x: f64, y: f64, anchor: &str, font: f64, body: &str) {
    let _ = writeln!(
        w,
        r#"<text class="{class}" x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{font}">{}</text>"#,
        escape(body)
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A rectangle in document coordinates.
#[derive(Debug, Clone, Copy)]
struct Area {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl Area {
    /// The x coordinate `fraction` of the way across.
    fn x(&self, fraction: f64) -> f64 {
        self.left + fraction * (self.right - self.left)
    }

    /// The y coordinate `fraction` of the way up.
    fn y(&self, fraction: f64) -> f64 {
        self.bottom - fraction * (self.bottom - self.top)
    }
}

/// The legend box at the right edge, as wide as its longest line.
struct Legend {
    left: f64,
    width: f64,
}

impl Legend {
    const SWATCH: f64 = 22.0;
    const PAD: f64 = 10.0;
    /// Two lines per series: the name, then its note.
    const ENTRY: f64 = 2.0 * LINE + 6.0;

    fn of(figure: &Figure) -> Self {
        let widest = figure
            .series
            .iter()
            .flat_map(|s| [text_width(&s.name, FONT), text_width(&s.note, FONT)])
            .fold(0.0, f64::max);
        let width = Self::PAD * 3.0 + Self::SWATCH + widest;
        Self {
            left: WIDTH - MARGIN - width,
            width,
        }
    }

    fn draw(&self, w: &mut String, figure: &Figure) {
        #[allow(clippy::cast_precision_loss)]
        let height = Self::PAD * 2.0 + Self::ENTRY * figure.series.len() as f64 - 6.0;
        let _ = writeln!(
            w,
            r##"<rect id="legend" x="{:.1}" y="{PLOT_TOP:.1}" width="{:.1}" height="{height:.1}" fill="white" stroke="#444"/>"##,
            self.left, self.width
        );
        let text_x = self.left + Self::PAD * 2.0 + Self::SWATCH;
        let mut y = PLOT_TOP + Self::PAD + FONT;
        for (series, colour) in figure.series.iter().zip(COLOURS.iter().cycle()) {
            let _ = writeln!(
                w,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/>"#,
                self.left + Self::PAD,
                y - 4.0,
                self.left + Self::PAD + Self::SWATCH,
                y - 4.0
            );
            text(w, "legend", text_x, y, "start", FONT, &series.name);
            text(w, "legend", text_x, y + LINE, "start", FONT, &series.note);
            y += Self::ENTRY;
        }
    }
}

/// The latency axis: log scale from a 1-2-5 value at or below the lowest latency to one at
/// or above the highest, labelled at each 1-2-5 value between (each power of ten alone when
/// that would be more than a dozen labels).
struct YAxis {
    /// log10 of the axis' ends, in microseconds.
    low: f64,
    high: f64,
    ticks: Vec<(f64, String)>,
}

impl YAxis {
    const MOST_TICKS: usize = 12;

    fn spanning(latencies: impl Iterator<Item = f64>) -> Self {
        let (lowest, highest) = latencies
            .filter(|us| us.is_finite() && *us > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), us| {
                (lo.min(us), hi.max(us))
            });
        // No data: an axis from 1 to 10 us, so the document is still well formed.
        let (lowest, highest) = if highest > 0.0 {
            (lowest, highest)
        } else {
            (1.0, 10.0)
        };
        let mut steps: &[u32] = &[1, 2, 5];
        loop {
            let first = Tick::at_or_below(lowest, steps);
            let mut last = Tick::at_or_above(highest, steps);
            if last.value() <= first.value() {
                last = last.next(steps);
            }
            let mut ticks = vec![first];
            while ticks.last().is_some_and(|t| t.value() < last.value()) {
                let next = ticks.last().map_or(first, |t| t.next(steps));
                ticks.push(next);
            }
            if ticks.len() <= Self::MOST_TICKS || steps.len() == 1 {
                return Self {
                    low: first.value().log10(),
                    high: last.value().log10(),
                    ticks: ticks.iter().map(|t| (t.value(), t.label())).collect(),
                };
            }
            steps = &[1];
        }
    }

    /// How far up the axis `us` lies (0 at the bottom, 1 at the top).
    fn fraction(&self, us: f64) -> f64 {
        (us.max(f64::MIN_POSITIVE).log10() - self.low) / (self.high - self.low)
    }
}

/// A 1-2-5 axis value: `mantissa` x 10^`exponent` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tick {
    mantissa: u32,
    exponent: i32,
}

impl Tick {
    fn value(self) -> f64 {
        f64::from(self.mantissa) * 10f64.powi(self.exponent)
    }

    /// The next value up among `steps` (mantissas in increasing order).
    fn next(self, steps: &[u32]) -> Self {
        match steps.iter().find(|&&m| m > self.mantissa) {
            Some(&mantissa) => Self { mantissa, ..self },
            None => Self {
                mantissa: steps[0],
                exponent: self.exponent + 1,
            },
        }
    }

    /// The largest value among `steps` that is at most `us`.
    fn at_or_below(us: f64, steps: &[u32]) -> Self {
        // A latency is between 1 ns and a minute: the exponent fits an i32 with room.
        #[allow(clippy::cast_possible_truncation)]
        let exponent = us.log10().floor() as i32;
        let mut best = Self {
            mantissa: steps[0],
            exponent,
        };
        // log10's rounding can put `us` a hair under 10^exponent: step down if so.
        if best.value() > us * (1.0 + 1e-9) {
            best.exponent -= 1;
        }
        while best.next(steps).value() <= us * (1.0 + 1e-9) {
            best = best.next(steps);
        }
        best
    }

    /// The smallest value among `steps` that is at least `us`.
    fn at_or_above(us: f64, steps: &[u32]) -> Self {
        let below = Self::at_or_below(us, steps);
        if below.value() >= us * (1.0 - 1e-9) {
            below
        } else {
            below.next(steps)
        }
    }

    /// "500 us", "1 ms", "20 ms", "0.5 us", "2 s".
    fn label(self) -> String {
        let (exponent, unit) = match self.exponent {
            e if e >= 6 => (e - 6, "s"),
            e if e >= 3 => (e - 3, "ms"),
            e => (e, "us"),
        };
        let digits = if exponent >= 0 {
            format!(
                "{}{}",
                self.mantissa,
                "0".repeat(exponent.unsigned_abs() as usize)
            )
        } else {
            let zeros = "0".repeat(exponent.unsigned_abs() as usize - 1);
            format!("0.{zeros}{}", self.mantissa)
        };
        format!("{digits} {unit}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tag's attributes, as written by [`svg`] (`name="value"`, no single quotes).
    fn attributes(tag: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = tag;
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq]
                .rsplit(|c: char| c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_owned();
            let after = &rest[eq + 2..];
            let end = after.find('"').expect("a closing quote");
            out.push((name, after[..end].to_owned()));
            rest = &after[end + 1..];
        }
        out
    }

    /// Every `<name ...>` tag's attributes, with the text up to its closing tag.
    fn elements(document: &str, name: &str) -> Vec<(Vec<(String, String)>, String)> {
        let open = format!("<{name} ");
        let close = format!("</{name}>");
        let mut out = Vec::new();
        let mut rest = document;
        while let Some(start) = rest.find(&open) {
            let after = &rest[start + open.len()..];
            let end = after.find('>').expect("a tag ends");
            let tag = &after[..end];
            let body = if tag.ends_with('/') {
                String::new()
            } else {
                let body_end = after.find(&close).expect("a closing tag");
                after[end + 1..body_end].to_owned()
            };
            out.push((attributes(tag), body));
            rest = &after[end..];
        }
        out
    }

    fn get<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(attrs: &[(String, String)], name: &str) -> f64 {
        get(attrs, name)
            .unwrap_or_else(|| panic!("attribute {name} in {attrs:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is a number in {attrs:?}"))
    }

    /// (left, top, right, bottom).
    type Rect = (f64, f64, f64, f64);

    fn rect_with_id(document: &str, id: &str) -> Rect {
        let (attrs, _) = elements(document, "rect")
            .into_iter()
            .find(|(a, _)| get(a, "id") == Some(id))
            .unwrap_or_else(|| panic!("a rect with id {id}"));
        let (x, y) = (number(&attrs, "x"), number(&attrs, "y"));
        (
            x,
            y,
            x + number(&attrs, "width"),
            y + number(&attrs, "height"),
        )
    }

    /// What a well-drawn figure's document shows, read back from the text.
    #[derive(Debug)]
    pub(crate) struct Drawn {
        /// Each series' name and points in document coordinates.
        pub(crate) series: Vec<(String, Vec<(f64, f64)>)>,
        pub(crate) x_ticks: Vec<String>,
        pub(crate) y_ticks: Vec<String>,
        /// The caption's lines.
        pub(crate) caption: Vec<String>,
        pub(crate) legend: Vec<String>,
    }

    /// Parses `document` and checks its structure: every series drawn once, left to right,
    /// inside the plot area; every text inside the view box; the legend box clear of the
    /// plot area.
    pub(crate) fn check(document: &str) -> Drawn {
        assert!(document.starts_with("<svg"), "{document}");
        assert!(document.trim_end().ends_with("</svg>"));
        let (svg, _) = &elements(document, "svg")[0];
        let view: Vec<f64> = get(svg, "viewBox")
            .expect("a viewBox")
            .split(' ')
            .map(|n| n.parse().expect("a number"))
            .collect();
        let [vx, vy, vw, vh] = <[f64; 4]>::try_from(view).expect("four numbers");
        let plot = rect_with_id(document, "plot-area");
        let legend = rect_with_id(document, "legend");
        let overlap =
            legend.0 < plot.2 && plot.0 < legend.2 && legend.1 < plot.3 && plot.1 < legend.3;
        assert!(!overlap, "legend {legend:?} overlaps the plot {plot:?}");

        let mut drawn = Drawn {
            series: Vec::new(),
            x_ticks: Vec::new(),
            y_ticks: Vec::new(),
            caption: Vec::new(),
            legend: Vec::new(),
        };
        for (attrs, body) in elements(document, "text") {
            let (x, y, font) = (
                number(&attrs, "x"),
                number(&attrs, "y"),
                number(&attrs, "font-size"),
            );
            let width = text_width(&body, font);
            let (left, right) = match get(&attrs, "text-anchor") {
                Some("middle") => (x - width / 2.0, x + width / 2.0),
                Some("end") => (x - width, x),
                _ => (x, x + width),
            };
            // A baseline at y: ascenders up to about a font size above, descenders below.
            let (top, bottom) = (y - font, y + font / 4.0);
            assert!(
                left >= vx && right <= vx + vw && top >= vy && bottom <= vy + vh,
                "{body:?} at ({left:.0}..{right:.0}, {top:.0}..{bottom:.0}) leaves the view box"
            );
            let inside = |r: Rect| left >= r.0 && right <= r.2 && top >= r.1 && bottom <= r.3;
            match get(&attrs, "class") {
                Some("x-tick") => drawn.x_ticks.push(body),
                Some("y-tick") => drawn.y_ticks.push(body),
                Some("caption") => drawn.caption.push(body),
                Some("legend") => {
                    assert!(inside(legend), "legend text {body:?} outside its box");
                    drawn.legend.push(body);
                }
                _ => {}
            }
        }
        for (attrs, _) in elements(document, "polyline") {
            let name = get(&attrs, "data-name").expect("a series name").to_owned();
            let points: Vec<(f64, f64)> = get(&attrs, "points")
                .expect("points")
                .split(' ')
                .map(|p| {
                    let (x, y) = p.split_once(',').expect("x,y");
                    (x.parse().expect("x"), y.parse().expect("y"))
                })
                .collect();
            assert!(
                points.windows(2).all(|w| w[0].0 < w[1].0),
                "{name}: x must increase strictly: {points:?}"
            );
            for &(x, y) in &points {
                let slack = 0.05;
                assert!(
                    x >= plot.0 - slack
                        && x <= plot.2 + slack
                        && y >= plot.1 - slack
                        && y <= plot.3 + slack,
                    "{name}: ({x}, {y}) outside the plot area {plot:?}"
                );
            }
            assert!(
                !drawn.series.iter().any(|(n, _)| *n == name),
                "{name} drawn twice"
            );
            drawn.series.push((name, points));
        }
        drawn
    }

    fn figure(series: Vec<Series>) -> Figure {
        Figure {
            title: "latency by percentile".into(),
            series,
            caption: vec!["64 B payload, 1 in flight".into(), "release build".into()],
        }
    }

    fn series(name: &str, samples: u64, base_us: f64) -> Series {
        let points = percentiles(samples)
            .into_iter()
            .map(|q| (q, base_us * (1.0 + (100.0 - q).recip().min(1e4) / 10.0)))
            .collect();
        Series {
            name: name.into(),
            note: format!("{samples} calls, max 12.5 ms"),
            points,
        }
    }

    #[test]
    fn percentiles_rise_strictly_and_end_where_the_samples_do() {
        assert!(percentiles(0).is_empty());
        assert_eq!(percentiles(1), [0.0]);
        for samples in [2, 10, 305, 1000, 20_000, 1_000_000] {
            let qs = percentiles(samples);
            assert!(qs.windows(2).all(|w| w[0] < w[1]), "{samples}: {qs:?}");
            assert_eq!(qs[0], 0.0);
            let last = *qs.last().expect("points");
            #[allow(clippy::cast_precision_loss)]
            let resolved = 100.0 * (1.0 - 1.0 / samples as f64);
            assert!(
                (last - resolved.min(99.99)).abs() < 1e-9,
                "{samples}: ends at {last}"
            );
        }
        // Enough samples: the full axis, one point per tenth of a nine.
        assert_eq!(percentiles(20_000).len(), 41);
    }

    #[test]
    fn y_labels_are_1_2_5_steps_across_the_range_in_us_and_ms() {
        let axis = YAxis::spanning([23.0, 61.0, 140.0, 2300.0].into_iter());
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            [
                "20 us", "50 us", "100 us", "200 us", "500 us", "1 ms", "2 ms", "5 ms"
            ]
        );
        assert!(axis.fraction(23.0) > 0.0 && axis.fraction(2300.0) < 1.0);
        // Exactly on a step: that step is the end.
        let axis = YAxis::spanning([100.0, 1000.0].into_iter());
        assert_eq!(axis.ticks.first().map(|t| t.1.as_str()), Some("100 us"));
        assert_eq!(axis.ticks.last().map(|t| t.1.as_str()), Some("1 ms"));
        // One value: still an axis of two labels.
        let axis = YAxis::spanning([7.0].into_iter());
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["5 us", "10 us"]);
        // Sub-microsecond and seconds; many decades fall back to powers of ten.
        let axis = YAxis::spanning([0.3, 3_000_000.0].into_iter());
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            [
                "0.1 us", "1 us", "10 us", "100 us", "1 ms", "10 ms", "100 ms", "1 s", "10 s"
            ]
        );
    }

    #[test]
    fn the_document_is_well_formed_and_nothing_leaves_it() {
        let document = svg(&figure(vec![
            series("raw", 20_000, 18.0),
            series("tcp", 20_000, 35.0),
            series("a-series-with-a-long-name", 305, 60.0),
            series("device", 3, 90.0),
        ]));
        let drawn = check(&document);
        assert_eq!(drawn.x_ticks, ["p50", "p90", "p99", "p99.9", "p99.99"]);
        let names: Vec<&str> = drawn.series.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["raw", "tcp", "a-series-with-a-long-name", "device"]);
        assert!(drawn.y_ticks.len() >= 3, "{:?}", drawn.y_ticks);
        assert_eq!(
            drawn.caption,
            ["64 B payload, 1 in flight", "release build"]
        );
        assert!(
            drawn
                .legend
                .contains(&"20000 calls, max 12.5 ms".to_owned())
        );
        // Names that are not XML stay text.
        let document = svg(&figure(vec![series("<a & b>", 10, 5.0)]));
        assert!(document.contains("&lt;a &amp; b&gt;"), "{document}");
        check(&document);
        // No series at all: still a document with its axes.
        check(&svg(&figure(Vec::new())));
    }
}
