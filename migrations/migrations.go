package migrations

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing/fstest"
)

//go:embed sql/*.sql
var embedded embed.FS

// FS holds the migration files in golang-migrate's layout: for each version
// NNNN, the files NNNN_name.up.sql and NNNN_name.down.sql at the root.
var FS fs.FS = mustSub(embedded, "sql")

// Migration is one version of the schema.
type Migration struct {
	Version int    // 1, 2, ...; applied in increasing order
	Name    string // short description from the file name
	Up      string // SQL that applies the version
	Down    string // SQL that reverts it
}

var fileName = regexp.MustCompile(`^(\d+)_([a-z0-9_]+)\.(up|down)\.sql$`)

// all is the parsed, validated list of embedded migrations, in version order.
var all = mustLoad(FS)

// All returns the embedded migrations in version order. The returned slice
// is a copy.
func All() []Migration {
	return append([]Migration(nil), all...)
}

// Latest returns the highest embedded version.
func Latest() int {
	return all[len(all)-1].Version
}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

func mustLoad(fsys fs.FS) []Migration {
	ms, err := load(fsys)
	if err != nil {
		panic("skiplock/migrations: embedded files: " + err.Error())
	}
	return ms
}

// load parses a golang-migrate style directory. Every version needs both an
// up and a down file, and versions must be 1, 2, 3, ... without gaps.
func load(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("unexpected file %q", e.Name())
		}
		v, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, fmt.Errorf("file %q: %w", e.Name(), err)
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: m[2]}
			byVersion[v] = mig
		}
		if mig.Name != m[2] {
			return nil, fmt.Errorf("version %d has two names: %q and %q", v, mig.Name, m[2])
		}
		if m[3] == "up" {
			mig.Up = string(body)
		} else {
			mig.Down = string(body)
		}
	}
	ms := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if strings.TrimSpace(m.Up) == "" || strings.TrimSpace(m.Down) == "" {
			return nil, fmt.Errorf("version %d needs non-empty up and down files", m.Version)
		}
		ms = append(ms, *m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("versions must be 1..n without gaps; found %d at position %d", m.Version, i+1)
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("no migrations")
	}
	return ms, nil
}

// GooseFS returns the migrations in goose's layout: one file per version,
// NNNNN_name.sql, with "-- +goose Up" and "-- +goose Down" sections. It is
// built from the same embedded files as [FS].
func GooseFS() fs.FS {
	files := fstest.MapFS{}
	for _, m := range all {
		name := fmt.Sprintf("%05d_%s.sql", m.Version, m.Name)
		body := "-- +goose Up\n-- +goose StatementBegin\n" + m.Up +
			"\n-- +goose StatementEnd\n\n-- +goose Down\n-- +goose StatementBegin\n" + m.Down +
			"\n-- +goose StatementEnd\n"
		files[path.Clean(name)] = &fstest.MapFile{Data: []byte(body), Mode: 0o444}
	}
	return files
}
