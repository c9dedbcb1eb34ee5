package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBinDirErrorSaysWhatToInstall(t *testing.T) {
	empty := t.TempDir()
	_, err := findBinDir(empty)
	require.ErrorIs(t, err, ErrNoServerBinaries)
	msg := err.Error()
	require.Contains(t, msg, "apt-get install postgresql")
	require.Contains(t, msg, "SKIPLOCK_PG_BINDIR="+empty)
	require.Contains(t, msg, "initdb")

	var nb *noBinariesError
	require.True(t, errors.As(err, &nb))
	require.Contains(t, (&noBinariesError{looked: []string{"PATH", debianBinGlob}}).Error(), "/usr/lib/postgresql/*/bin")
}

func TestBinDirResolvesSymlinks(t *testing.T) {
	real, err := BinDir()
	require.NoError(t, err)
	links := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		require.NoError(t, os.Symlink(filepath.Join(real, name), filepath.Join(links, name)))
	}
	got, err := findBinDir(links)
	require.NoError(t, err)
	require.Equal(t, real, got)
	require.FileExists(t, filepath.Join(got, "pg_basebackup"))
}

func TestVersions(t *testing.T) {
	require.Equal(t, []int{15}, versionOf("/usr/lib/postgresql/15/bin"))
	require.Equal(t, []int{9, 6}, versionOf("/usr/lib/postgresql/9.6/bin"))
	require.Equal(t, []int{16}, versionOf("/usr/pgsql-16/bin"))
	require.Equal(t, []int{17}, versionOf("/opt/homebrew/opt/postgresql@17/bin"))
	require.Nil(t, versionOf("/usr/local/pgsql/bin"))

	for in, want := range map[string]string{
		"postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg12+1)": "15",
		"postgres (PostgreSQL) 9.6.24":                          "9.6",
		"postgres (PostgreSQL) 17beta1":                         "17",
		"garbage":                                               "unknown",
	} {
		require.Equal(t, want, majorVersion(in), in)
	}
}
