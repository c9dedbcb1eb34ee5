package harness

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
)

// mvccLineStyle draws each variant: the baseline solid, the snapshots
// dashed and dotted.
var mvccLineStyle = map[string]struct{ color, dash, label string }{
	MVCCNone:    {"#1f77b4", "", "no old snapshot"},
	MVCCPrimary: {"#d62728", "6 4", "snapshot held on the primary"},
	MVCCReplica: {"#2ca02c", "2 3", "snapshot held on a replica (feedback on)"},
}

// MVCCSVG draws the mvcc scenario's throughput per window (batches/s
// against minutes into the run), one panel per system, a line per variant.
// It fails if the report has no mvcc figures.
func (r *Report) MVCCSVG() ([]byte, error) {
	type line struct {
		variant string
		x, y    []float64
	}
	type panel struct {
		system string
		lines  []line
	}
	var panels []panel
	maxX, maxY := 0.0, 0.0
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		p := panel{system: sys}
		for _, v := range AllMVCCVariants {
			var l line
			r.mu.Lock()
			for _, f := range r.Figures {
				if f.Scenario != ScenarioMVCC || f.System != sys || f.Metric != "batches_per_s" || fmt.Sprint(f.Params["variant"]) != v {
					continue
				}
				end, err := strconv.ParseFloat(fmt.Sprint(f.Params["window_end_s"]), 64)
				if err != nil {
					continue
				}
				l.x, l.y = append(l.x, end/60), append(l.y, f.Value)
				maxX, maxY = math.Max(maxX, end/60), math.Max(maxY, f.Value)
			}
			r.mu.Unlock()
			if len(l.x) > 0 {
				l.variant = v
				p.lines = append(p.lines, l)
			}
		}
		if len(p.lines) > 0 {
			panels = append(panels, p)
		}
	}
	if len(panels) == 0 {
		return nil, errors.New("no mvcc figures to chart")
	}
	const (
		pw, ph      = 380.0, 260.0
		left, right = 70.0, 20.0
		top, bottom = 70.0, 80.0
		gap         = 30.0
		font        = "DejaVu Sans, Arial, Helvetica, sans-serif"
		small       = 11
	)
	width := left + float64(len(panels)-1)*(pw+gap+left) + pw + right
	height := top + ph + bottom
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="%s">`+"\n", width, height, width, height, font)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="28" font-size="16" font-weight="bold">%s</text>`+"\n", left, html.EscapeString("Churn under an old snapshot: completed batches/s per window"))
	sub := fmt.Sprintf("%s · PostgreSQL %s, fsync %s · %d CPUs · %s · River %s", r.Header.Date, orDash(r.Header.PostgreSQL), orDash(r.Header.Fsync), r.Header.CPUs, r.Header.Preset, orDash(r.Header.River))
	fmt.Fprintf(&b, `<text x="%.0f" y="48" font-size="%d" fill="#555">%s</text>`+"\n", left, small, html.EscapeString(sub))
	ystep, ytop := niceScale(maxY)
	xstep, xtop := niceScale(maxX)
	for i, p := range panels {
		x0 := left + float64(i)*(pw+gap+left)
		xOf := func(x float64) float64 { return x0 + x/xtop*pw }
		yOf := func(y float64) float64 { return top + ph - y/ytop*ph }
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="13" font-weight="bold" text-anchor="middle">%s</text>`+"\n", x0+pw/2, top-8, html.EscapeString(p.system))
		for y := 0.0; y <= ytop+ystep/2; y += ystep {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e0e0e0"/>`+"\n", x0, yOf(y), x0+pw, yOf(y))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="end">%s</text>`+"\n", x0-6, yOf(y)+4, small, shortNum(y))
		}
		for x := 0.0; x <= xtop+xstep/2; x += xstep {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle">%s</text>`+"\n", xOf(x), top+ph+17, small, shortNum(x))
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", x0, top, pw, ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle">minutes into the run (window end)</text>`+"\n", x0+pw/2, top+ph+36, small)
		for _, l := range p.lines {
			st := mvccLineStyle[l.variant]
			var pts bytes.Buffer
			for j := range l.x {
				fmt.Fprintf(&pts, "%.1f,%.1f ", xOf(l.x[j]), yOf(l.y[j]))
			}
			dash := ""
			if st.dash != "" {
				dash = fmt.Sprintf(` stroke-dasharray="%s"`, st.dash)
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"%s/>`+"\n", bytes.TrimSpace(pts.Bytes()), st.color, dash)
		}
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">batches/s</text>`+"\n", left-48, top+ph/2, small, left-48, top+ph/2)
	var drawn []string
	for _, p := range panels {
		for _, l := range p.lines {
			if !slices.Contains(drawn, l.variant) {
				drawn = append(drawn, l.variant)
			}
		}
	}
	for i, v := range drawn {
		st := mvccLineStyle[v]
		x, y := left+float64(i)*230, top+ph+60
		dash := ""
		if st.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, st.dash)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"%s/>`+"\n", x, y, x+28, y, st.color, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="%d">%s</text>`+"\n", x+34, y+4, small+1, html.EscapeString(st.label))
	}
	b.WriteString("</svg>\n")
	return b.Bytes(), nil
}
