package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// templateFormat changes whenever what the template contains changes, so that templates built
// by older code are not reused.
const templateFormat = "pgtest-template-2"

// initdbArgs are the initdb flags after "-D <dir>". --no-sync is safe: a template that did not
// reach the disk before an OS crash is lost along with /tmp. -A trust sets trust for local and
// loopback connections, replication included (pg_hba lines are appended too, to not depend on
// initdb's defaults).
var initdbArgs = []string{"-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"}

// hbaLines allow every user, database and replication connection from loopback without a
// password. They only make the template usable by itself: each server's pg_hba.conf is
// rewritten from its Options (see writeConf).
const hbaLines = `
# pgtest: trust every loopback connection, replication included.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`

var templates struct {
	sync.Mutex
	byKey map[string]string
}

// templateDir returns the cached template data directory for the binaries in bin, running
// initdb first if no process has done so yet. Templates are built in a work directory and
// renamed into place, so a template that exists is complete; a lock file keeps concurrent test
// processes from building the same one twice.
func templateDir(ctx context.Context, root, bin string, u *osUser) (string, error) {
	version, err := serverVersion(bin)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(strings.Join(append([]string{templateFormat, bin, version}, initdbArgs...), "\x00")))
	name := fmt.Sprintf("template-%s-%s", majorVersion(version), hex.EncodeToString(h[:6]))
	path := filepath.Join(root, name)

	templates.Lock()
	defer templates.Unlock()
	if dir, ok := templates.byKey[name]; ok {
		return dir, nil
	}
	if err := buildTemplate(ctx, root, bin, path, u); err != nil {
		return "", fmt.Errorf("initdb template: %w", err)
	}
	if templates.byKey == nil {
		templates.byKey = make(map[string]string)
	}
	templates.byKey[name] = path
	return path, nil
}

// templateComplete reports whether path holds a usable data directory.
func templateComplete(path string) bool {
	for _, f := range []string{"PG_VERSION", "global/pg_control", "postgresql.conf", "pg_hba.conf"} {
		if _, err := os.Stat(filepath.Join(path, f)); err != nil {
			return false
		}
	}
	return true
}

// buildTemplate makes sure path holds an initdb'd data directory, under an exclusive lock on
// path+".lock".
func buildTemplate(ctx context.Context, root, bin, path string, u *osUser) error {
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := flock(lock); err != nil {
		return err
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()

	if templateComplete(path) {
		return nil
	}
	// Left over from a deleted or damaged template: rebuild.
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	work, err := newWorkDir(root, buildDirPrefix, u)
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	data := filepath.Join(work, dataDirName)
	if _, err := u.run(ctx, work, filepath.Join(bin, "initdb"), append([]string{"-D", data}, initdbArgs...)...); err != nil {
		return err
	}
	err = errors.Join(
		appendFile(filepath.Join(data, "postgresql.conf"), "\n# pgtest: settings of this server, rewritten by pgtest.\ninclude_if_exists = '"+confFile+"'\n"),
		appendFile(filepath.Join(data, "pg_hba.conf"), hbaLines),
	)
	if err != nil {
		return err
	}
	return os.Rename(data, path)
}

// flock takes an exclusive lock on f, retrying when interrupted by a signal.
func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// appendFile appends text to an existing file, which keeps its owner.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
