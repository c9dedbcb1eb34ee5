package harness

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"math"
	"os"
	"strings"
)

// series is one line of a panel.
type series struct {
	name   string
	color  string
	dash   string             // stroke-dasharray, "" for solid
	points map[string]float64 // workers (as text) -> batches/s
}

// chartPanel is one claim size.
type chartPanel struct {
	title   string
	workers []string
	lines   []series
	ceiling float64 // pgbench; 0 if not measured
}

var systemColors = map[string]string{SystemSkiplock: "#1f77b4", SystemRiver: "#e6550d", SystemPgbench: "#555555"}

// chartLines are the lines of each panel, in drawing order.
var chartLines = []struct {
	v           variant
	name, color string
	dash        string
}{
	{variant{SystemSkiplock, ""}, "skiplock", systemColors[SystemSkiplock], ""},
	{variant{SystemRiver, riverOneClient}, "River, one client", systemColors[SystemRiver], ""},
	{variant{SystemRiver, riverPerWorker}, "River, client per worker", "#fdae6b", "3 3"},
}

// chartPanels collects the throughput figures by claim size.
func (r *Report) chartPanels() []chartPanel {
	sizes := paramValues(r, ScenarioThroughput, SystemSkiplock, "batches_per_s", "claim_size")
	if len(sizes) == 0 {
		sizes = paramValues(r, ScenarioThroughput, SystemRiver, "batches_per_s", "claim_size")
	}
	var panels []chartPanel
	for _, s := range sizes {
		p := chartPanel{title: fmt.Sprintf("claim size %v", s)}
		r.mu.Lock()
		seenW := map[string]bool{}
		bySys := map[variant]map[string]float64{}
		for _, f := range r.Figures {
			if f.Scenario != ScenarioThroughput || f.Metric != "batches_per_s" || fmt.Sprint(f.Params["claim_size"]) != fmt.Sprint(s) {
				continue
			}
			w := fmt.Sprint(f.Params["workers"])
			if !seenW[w] {
				seenW[w] = true
				p.workers = append(p.workers, w)
			}
			id := variant{f.System, fmt.Sprint(f.Params["config"])}
			if f.Params["config"] == nil {
				id.config = ""
			}
			if bySys[id] == nil {
				bySys[id] = map[string]float64{}
			}
			bySys[id][w] = f.Value
		}
		r.mu.Unlock()
		for _, l := range chartLines {
			if pts := bySys[l.v]; pts != nil {
				p.lines = append(p.lines, series{name: l.name, color: l.color, dash: l.dash, points: pts})
			}
		}
		if v, ok := r.get(ScenarioThroughput, SystemPgbench, "best_batches_per_s", "claim_size", s); ok {
			p.ceiling = v
		}
		panels = append(panels, p)
	}
	return panels
}

// ThroughputSVG draws throughput (batches/s) against workers, one panel
// per claim size, a line per system and a dashed line for the pgbench
// ceiling. It fails if the report has no throughput figures.
func (r *Report) ThroughputSVG() ([]byte, error) {
	panels := r.chartPanels()
	if len(panels) == 0 {
		return nil, errors.New("no throughput figures to chart")
	}
	const (
		pw, ph          = 340.0, 260.0 // panel plot area
		left, right     = 70.0, 20.0
		top, bottom     = 70.0, 90.0
		gap             = 30.0
		fontFamily      = "DejaVu Sans, Arial, Helvetica, sans-serif"
		tickLabelSize   = 11
		titleSize       = 16
		panelTitleSize  = 13
		legendEntryWide = 160.0
	)
	width := left + float64(len(panels)-1)*(pw+gap+left) + pw + right
	height := top + ph + bottom
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="%s">`+"\n", width, height, width, height, fontFamily)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := "Claim+complete throughput, no-op handler (batches/s, median)"
	sub := fmt.Sprintf("%s · PostgreSQL %s, fsync %s · %d CPUs · %s", r.Header.Date, orDash(r.Header.PostgreSQL), orDash(r.Header.Fsync), r.Header.CPUs, r.Header.Preset)
	fmt.Fprintf(&b, `<text x="%.0f" y="28" font-size="%d" font-weight="bold">%s</text>`+"\n", left, titleSize, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="%.0f" y="48" font-size="%d" fill="#555">%s</text>`+"\n", left, tickLabelSize, html.EscapeString(sub))
	for i, p := range panels {
		x0 := left + float64(i)*(pw+gap+left)
		y0 := top
		maxV := p.ceiling
		for _, s := range p.lines {
			for _, v := range s.points {
				maxV = math.Max(maxV, v)
			}
		}
		step, yMax := niceScale(maxV)
		yOf := func(v float64) float64 { return y0 + ph - v/yMax*ph }
		xOf := func(j int) float64 {
			if len(p.workers) == 1 {
				return x0 + pw/2
			}
			return x0 + 15 + float64(j)*(pw-30)/float64(len(p.workers)-1)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" font-weight="bold" text-anchor="middle">%s</text>`+"\n", x0+pw/2, y0-8, panelTitleSize, html.EscapeString(p.title))
		// Grid and y ticks.
		for v := 0.0; v <= yMax+step/2; v += step {
			y := yOf(v)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e0e0e0"/>`+"\n", x0, y, x0+pw, y)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="end">%s</text>`+"\n", x0-6, y+4, tickLabelSize, shortNum(v))
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", x0, y0, pw, ph)
		// X ticks.
		for j, w := range p.workers {
			x := xOf(j)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`+"\n", x, y0+ph, x, y0+ph+4)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle">%s</text>`+"\n", x, y0+ph+17, tickLabelSize, html.EscapeString(w))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle">workers (runners / River clients)</text>`+"\n", x0+pw/2, y0+ph+36, tickLabelSize)
		if i == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">batches/s</text>`+"\n",
				x0-48, y0+ph/2, tickLabelSize, x0-48, y0+ph/2)
		}
		if p.ceiling > 0 {
			y := yOf(p.ceiling)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="6 4"/>`+"\n", x0, y, x0+pw, y, systemColors[SystemPgbench])
		}
		for _, s := range p.lines {
			var pts bytes.Buffer
			for j, w := range p.workers {
				v, ok := s.points[w]
				if !ok {
					continue
				}
				fmt.Fprintf(&pts, "%.1f,%.1f ", xOf(j), yOf(v))
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", xOf(j), yOf(v), s.color)
			}
			dash := ""
			if s.dash != "" {
				dash = fmt.Sprintf(` stroke-dasharray="%s"`, s.dash)
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"%s/>`+"\n", bytes.TrimSpace(pts.Bytes()), s.color, dash)
		}
	}
	// Legend.
	ly := top + ph + 62
	var entries []struct{ name, color, dash string }
	for _, l := range chartLines {
		dash := ""
		if l.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, l.dash)
		}
		name := l.name
		if l.v.system == SystemRiver {
			name = strings.Replace(name, "River", "River "+r.Header.River, 1)
		}
		entries = append(entries, struct{ name, color, dash string }{name, l.color, dash})
	}
	entries = append(entries, struct{ name, color, dash string }{"pgbench ceiling (same SQL cycle, 8 clients)", systemColors[SystemPgbench], ` stroke-dasharray="6 4"`})
	for i, e := range entries {
		x := left + float64(i)*legendEntryWide*1.45
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"%s/>`+"\n", x, ly, x+28, ly, e.color, e.dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d">%s</text>`+"\n", x+34, ly+4, tickLabelSize+1, html.EscapeString(e.name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes(), nil
}

// WriteChart writes ThroughputSVG to path, and MVCCSVG to path (without
// throughput figures) or next to it (".svg" becoming ".mvcc.svg").
func (r *Report) WriteChart(path string) error {
	svg, err := r.ThroughputSVG()
	if m, merr := r.MVCCSVG(); merr == nil {
		if err != nil {
			return os.WriteFile(path, m, 0o644)
		}
		if werr := os.WriteFile(strings.TrimSuffix(path, ".svg")+".mvcc.svg", m, 0o644); werr != nil {
			return werr
		}
	}
	if err != nil {
		return err
	}
	return os.WriteFile(path, svg, 0o644)
}

// niceScale returns a tick step of 1, 2 or 5 times a power of ten giving
// about five ticks up to maxV, and the axis top (a multiple of it).
func niceScale(maxV float64) (step, top float64) {
	if maxV <= 0 {
		return 1, 5
	}
	raw := maxV / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	switch f := raw / mag; {
	case f <= 1:
		step = mag
	case f <= 2:
		step = 2 * mag
	case f <= 5:
		step = 5 * mag
	default:
		step = 10 * mag
	}
	return step, math.Ceil(maxV/step) * step
}

// shortNum writes 12000 as "12k" and 1500000 as "1.5M".
func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return trimZero(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case v >= 1e3:
		return trimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	}
	return trimZero(fmt.Sprintf("%.1f", v))
}

func trimZero(s string) string {
	if len(s) > 2 && s[len(s)-2:] == ".0" {
		return s[:len(s)-2]
	}
	return s
}
