package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ErrNoServerBinaries is returned, wrapped in an error that says where pgtest looked and what to
// install, when the PostgreSQL server binaries (initdb and postgres) cannot be found. Test
// helpers fail the test with that message; check for it with errors.Is.
var ErrNoServerBinaries = errors.New("pgtest: no PostgreSQL server binaries")

// envBinDir names the directory holding the server binaries, overriding the search.
const envBinDir = "SKIPLOCK_PG_BINDIR"

// installHint tells the user how to get server binaries.
const installHint = "install the PostgreSQL server package " +
	"(Debian/Ubuntu: apt-get install postgresql; Fedora/RHEL: dnf install postgresql-server; " +
	"Alpine: apk add postgresql; Arch: pacman -S postgresql; macOS: brew install postgresql), " +
	"or set " + envBinDir + " to the directory that holds initdb and postgres"

// noBinariesError explains a failed search for server binaries.
type noBinariesError struct {
	looked []string // where the search looked, in order
}

func (e *noBinariesError) Error() string {
	return fmt.Sprintf("PostgreSQL server binaries (initdb, postgres) not found (looked in %s): %s",
		strings.Join(e.looked, ", "), installHint)
}

func (e *noBinariesError) Unwrap() error { return ErrNoServerBinaries }

// debianBinGlob matches the binaries of the Debian/Ubuntu packages, one directory per major
// version. The others are common install locations elsewhere.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

var otherBinGlobs = []string{"/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin"}

var binDirCache struct {
	sync.Mutex
	done bool
	dir  string
	err  error
}

// BinDir returns the directory that holds the PostgreSQL server binaries: $SKIPLOCK_PG_BINDIR if
// set, else the directory of initdb and postgres on PATH, else the highest version under
// /usr/lib/postgresql/*/bin (and a few other common locations). The result, error included, is
// cached for the life of the process. The error wraps ErrNoServerBinaries and says what to
// install.
func BinDir() (string, error) {
	dir, err := binDir()
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return dir, nil
}

// binDir is BinDir without the package prefix on its error.
func binDir() (string, error) {
	binDirCache.Lock()
	defer binDirCache.Unlock()
	if !binDirCache.done {
		binDirCache.dir, binDirCache.err = findBinDir(os.Getenv(envBinDir))
		binDirCache.done = true
	}
	return binDirCache.dir, binDirCache.err
}

// findBinDir searches for the server binaries; a non-empty override is the only place it looks.
func findBinDir(override string) (string, error) {
	if override != "" {
		if dir := resolveBinDir(override); dir != "" {
			return dir, nil
		}
		return "", &noBinariesError{looked: []string{envBinDir + "=" + override}}
	}
	looked := []string{"PATH"}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if dir := resolveBinDir(filepath.Dir(initdb)); dir != "" {
			return dir, nil
		}
	}
	for _, pattern := range append([]string{debianBinGlob}, otherBinGlobs...) {
		looked = append(looked, pattern)
		if dir := highestVersionDir(pattern); dir != "" {
			return dir, nil
		}
	}
	return "", &noBinariesError{looked: looked}
}

// resolveBinDir returns the absolute directory that really holds the binaries found in dir:
// PATH often has symlinks (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) to only
// some of them, and pg_basebackup, pg_rewind and pg_ctl are needed as well. "" if none.
func resolveBinDir(dir string) string {
	if !hasServerBinaries(dir) {
		return ""
	}
	initdb, err := filepath.EvalSymlinks(filepath.Join(dir, "initdb"))
	if err != nil {
		return ""
	}
	real, err := filepath.Abs(filepath.Dir(initdb))
	if err != nil || !hasServerBinaries(real) {
		return ""
	}
	return real
}

// highestVersionDir returns the match of pattern with the highest version number in its path
// that holds the server binaries, or "".
func highestVersionDir(pattern string) string {
	matches, _ := filepath.Glob(pattern)
	matches = slices.DeleteFunc(matches, func(dir string) bool { return resolveBinDir(dir) == "" })
	slices.SortFunc(matches, func(a, b string) int { return slices.Compare(versionOf(a), versionOf(b)) })
	if len(matches) == 0 {
		return ""
	}
	return resolveBinDir(matches[len(matches)-1])
}

// versionOf extracts the numbers of the first path element that starts with a digit or is
// "postgresql@<version>" / "pgsql-<version>": "/usr/lib/postgresql/15/bin" gives [15].
func versionOf(dir string) []int {
	for _, elem := range strings.Split(filepath.ToSlash(dir), "/") {
		if i := strings.IndexAny(elem, "@-"); i >= 0 {
			elem = elem[i+1:]
		}
		if elem == "" || elem[0] < '0' || elem[0] > '9' {
			continue
		}
		var v []int
		for _, part := range strings.Split(elem, ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				break
			}
			v = append(v, n)
		}
		return v
	}
	return nil
}

// hasServerBinaries reports whether dir holds executable initdb and postgres files.
func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

var versionCache struct {
	sync.Mutex
	byDir map[string]string
}

// serverVersion returns the output of "postgres --version" for the binaries in bin, e.g.
// "postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg12+1)". It runs as the invoking user: the
// postgres binary answers --version before it refuses to run as root.
func serverVersion(bin string) (string, error) {
	versionCache.Lock()
	defer versionCache.Unlock()
	if v, ok := versionCache.byDir[bin]; ok {
		return v, nil
	}
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", filepath.Join(bin, "postgres"), err)
	}
	v := strings.TrimSpace(string(out))
	if versionCache.byDir == nil {
		versionCache.byDir = make(map[string]string)
	}
	versionCache.byDir[bin] = v
	return v, nil
}

// majorVersion extracts the major version ("15"; "9.6" before PostgreSQL 10) from
// serverVersion's output, or "unknown".
func majorVersion(version string) string {
	_, rest, _ := strings.Cut(version, ") ")
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "unknown"
	}
	leadingDigits := func(s string) string {
		if i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			return s[:i]
		}
		return s
	}
	parts := strings.Split(fields[0], ".")
	major := leadingDigits(parts[0])
	if major == "" {
		return "unknown"
	}
	if n, _ := strconv.Atoi(major); n < 10 && len(parts) > 1 {
		return major + "." + leadingDigits(parts[1])
	}
	return major
}
