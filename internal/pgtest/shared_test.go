package pgtest

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeTB records what the helpers do with a test.
type fakeTB struct {
	name     string
	cleanups []func()
	fatal    string
	logs     []string
}

func (f *fakeTB) Helper()           { /* nothing to record */ }
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Name() string      { return f.name }
func (f *fakeTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	if f.fatal == "" {
		f.fatal = fmt.Sprintf(format, args...)
	}
}

// runCleanups runs the registered cleanups in reverse order, as testing does.
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	f.cleanups = nil
}

var _ TB = (*fakeTB)(nil)
var _ TB = (testing.TB)(nil)

func TestNewSchema(t *testing.T) {
	t.Parallel()
	url := SharedURL(t)
	ft := &fakeTB{name: "TestNewSchema/Parallel case #1"}
	a, b := NewSchema(ft, url), NewSchema(ft, url)
	require.Empty(t, ft.fatal)
	require.NotEqual(t, a, b)
	require.True(t, strings.HasPrefix(a, "t_testnewschema_parallel_case_1_"), a)
	count := func() int64 {
		n, err := queryInt(testCtx(t), url, "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", []string{a, b})
		require.NoError(t, err)
		return n
	}
	require.EqualValues(t, 2, count())
	// Schemas are usable, and dropped with their contents.
	execSQL(t, url, "CREATE TABLE "+a+".t (v int)")

	ft.runCleanups()
	require.Empty(t, ft.logs)
	require.EqualValues(t, 0, count())
}

func TestSchemaName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	for _, tc := range []struct{ test, want string }{
		{"TestFoo", "t_testfoo_0123abcd"},
		{"TestFoo/sub_test#01", "t_testfoo_sub_test_01_0123abcd"},
		{"Test__Ünïcode/名前/-", "t_test_n_code_0123abcd"},
		{"///", "t_0123abcd"},
		{"", "t_0123abcd"},
		{strings.Repeat("a", 100), "t_" + strings.Repeat("a", 52) + "_0123abcd"},
		{strings.Repeat("a", 51) + "/b", "t_" + strings.Repeat("a", 51) + "_0123abcd"},
	} {
		got := schemaName(tc.test, "0123abcd")
		require.Equal(t, tc.want, got, "test name %q", tc.test)
		require.LessOrEqual(t, len(got), maxIdentifierLen)
		require.Regexp(t, valid, got)
	}
}

// TestHelpersFailWithoutBinaries is not parallel: it replaces the cached BinDir result.
func TestHelpersFailWithoutBinaries(t *testing.T) {
	t.Setenv(envDatabaseURL, "")
	binDirCache.Lock()
	savedDone, savedDir, savedErr := binDirCache.done, binDirCache.dir, binDirCache.err
	binDirCache.done, binDirCache.dir, binDirCache.err = true, "", &noBinariesError{looked: []string{"PATH"}}
	binDirCache.Unlock()
	t.Cleanup(func() {
		binDirCache.Lock()
		binDirCache.done, binDirCache.dir, binDirCache.err = savedDone, savedDir, savedErr
		binDirCache.Unlock()
	})
	StopShared()

	ft := &fakeTB{name: "x"}
	require.Nil(t, NewPrimary(ft, nil))
	require.Contains(t, ft.fatal, "apt-get install postgresql")

	ft = &fakeTB{name: "x"}
	require.Empty(t, SharedURL(ft))
	require.Contains(t, ft.fatal, "apt-get install postgresql")
	require.Contains(t, ft.fatal, envDatabaseURL)
	require.Empty(t, ft.cleanups)
}

// TestSharedURLFromEnv is not parallel: it sets the environment.
func TestSharedURLFromEnv(t *testing.T) {
	t.Cleanup(func() {
		shared.Lock()
		shared.externalOK = false
		shared.Unlock()
	})
	// An unreachable server fails the test loudly.
	t.Setenv(envDatabaseURL, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5")
	ft := &fakeTB{name: "x"}
	require.Empty(t, SharedURL(ft))
	require.Contains(t, ft.fatal, envDatabaseURL+" is set, but its server does not answer")

	// A reachable one is used as is.
	s := NewPrimary(t, nil)
	t.Setenv(envDatabaseURL, s.ConnString("other"))
	execSQL(t, s.ConnString(""), "CREATE DATABASE other")
	ft = &fakeTB{name: "x"}
	require.Equal(t, s.ConnString("other"), SharedURL(ft))
	require.Empty(t, ft.fatal)
}
