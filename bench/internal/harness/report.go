package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// Systems measured side by side.
const (
	SystemSkiplock = "skiplock"
	SystemRiver    = "river"
	SystemPgbench  = "pgbench"
)

// Figure is one measured (or derived) number.
type Figure struct {
	Scenario string         `json:"scenario"`
	System   string         `json:"system"`
	Params   map[string]any `json:"params"`
	Metric   string         `json:"metric"`
	Value    float64        `json:"value"`
	Unit     string         `json:"unit"`
}

// Header describes the run: when, where and with what.
type Header struct {
	Date            string   `json:"date"`
	Preset          string   `json:"preset"`
	Command         string   `json:"command"`
	Scenarios       []string `json:"scenarios"`
	Target          string   `json:"target"` // "throwaway" or "dsn"
	CPUs            int      `json:"nproc"`
	MemoryBytes     int64    `json:"memory_bytes"`
	OS              string   `json:"os"`
	PostgreSQL      string   `json:"postgresql"`
	Fsync           string   `json:"fsync"`
	Go              string   `json:"go"`
	River           string   `json:"river"`
	GitCommit       string   `json:"git_commit,omitempty"`
	DurationSeconds float64  `json:"duration_seconds"`
}

// Report is everything a run produced.
type Report struct {
	Header  Header   `json:"header"`
	Figures []Figure `json:"figures"`
	Targets []Target `json:"targets,omitempty"`
	Notes   []string `json:"notes,omitempty"`

	mu sync.Mutex
}

// add records a figure. params are key/value pairs.
func (r *Report) add(scenario, system, metric string, value float64, unit string, params ...any) {
	p := map[string]any{}
	for i := 0; i+1 < len(params); i += 2 {
		p[fmt.Sprint(params[i])] = params[i+1]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Figures = append(r.Figures, Figure{Scenario: scenario, System: system, Params: p, Metric: metric, Value: value, Unit: unit})
}

// note records a remark for the reader (a miss explained, a skipped part).
func (r *Report) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// get returns the value of the first figure that matches scenario, system,
// metric and every given param (key/value pairs, compared as text).
func (r *Report) get(scenario, system, metric string, params ...any) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, f := range r.Figures {
		if f.Scenario != scenario || f.System != system || f.Metric != metric {
			continue
		}
		for i := 0; i+1 < len(params); i += 2 {
			v, ok := f.Params[fmt.Sprint(params[i])]
			if !ok || fmt.Sprint(v) != fmt.Sprint(params[i+1]) {
				continue next
			}
		}
		return f.Value, true
	}
	return 0, false
}

// max returns the largest value among the figures that match (see get).
func (r *Report) max(scenario, system, metric string, params ...any) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	best, found := 0.0, false
next:
	for _, f := range r.Figures {
		if f.Scenario != scenario || f.System != system || f.Metric != metric {
			continue
		}
		for i := 0; i+1 < len(params); i += 2 {
			v, ok := f.Params[fmt.Sprint(params[i])]
			if !ok || fmt.Sprint(v) != fmt.Sprint(params[i+1]) {
				continue next
			}
		}
		if !found || f.Value > best {
			best, found = f.Value, true
		}
	}
	return best, found
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	r.mu.Lock()
	b, err := json.MarshalIndent(r, "", "  ")
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
