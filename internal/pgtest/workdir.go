package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ownerFile is the file in every work directory that names the process that created it.
const ownerFile = "owner"

// Work directory name prefixes: a server ("pg-") and a template being built ("build-").
const (
	serverDirPrefix = "pg-"
	buildDirPrefix  = "build-"
)

// orphanAge is how old a work directory without an owner file (its creator died between
// creating it and writing the file) must be before the sweep removes it.
const orphanAge = time.Hour

// rootDir is the directory all servers of this effective user live under.
func rootDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("skiplock-pgtest-%d", os.Geteuid()))
}

var sweepOnce sync.Once

// ensureRoot creates the root directory if needed, checks that it is a real directory owned by
// this user, and sweeps stale work directories the first time it is called in a process.
func ensureRoot() (string, error) {
	root := rootDir()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", root, err)
	}
	fi, err := os.Lstat(root)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s is not a directory", root)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s is owned by uid %d, not by this user (uid %d); remove it", root, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o755 {
		if err := os.Chmod(root, 0o755); err != nil {
			return "", err
		}
	}
	u, err := serverUser()
	if err != nil {
		return "", err
	}
	if err := u.checkCanReach(root); err != nil {
		return "", err
	}
	sweepOnce.Do(func() { sweep(root) })
	return root, nil
}

// checkCanReach fails if the server user (when it is not this process's user) cannot search
// every directory on the way to dir, as when TMPDIR is a private directory.
func (u *osUser) checkCanReach(dir string) error {
	if u.cred == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		perm := fi.Mode().Perm()
		if ok && !(perm&0o001 != 0 || int(st.Gid) == u.gid && perm&0o010 != 0 || int(st.Uid) == u.uid && perm&0o100 != 0) {
			return fmt.Errorf("the postgres user, which runs the servers, cannot enter %s (mode %v); "+
				"set TMPDIR to a directory it can reach, such as /tmp", d, perm)
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

// osUser is the account the server binaries run as.
type osUser struct {
	cred     *syscall.Credential // nil: run as this process's user
	uid, gid int
}

var serverUserCache struct {
	sync.Mutex
	u *osUser
}

// serverUser returns the account to run server binaries as: this process's user, or the
// "postgres" system user when this process runs as root (PostgreSQL refuses to run as root).
func serverUser() (*osUser, error) {
	serverUserCache.Lock()
	defer serverUserCache.Unlock()
	if serverUserCache.u != nil {
		return serverUserCache.u, nil
	}
	if os.Geteuid() != 0 {
		serverUserCache.u = &osUser{uid: os.Geteuid(), gid: os.Getegid()}
		return serverUserCache.u, nil
	}
	pu, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses to run as root, "+
			"but there is no postgres system user to run it as (create one, e.g. useradd --system postgres, "+
			"or run the tests as a regular user): %w", err)
	}
	uid, err1 := strconv.ParseUint(pu.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(pu.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres user: %w", err)
	}
	serverUserCache.u = &osUser{
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		uid:  int(uid),
		gid:  int(gid),
	}
	return serverUserCache.u, nil
}

// chown gives path to the server user when this process runs as someone else.
func (u *osUser) chown(path string) error {
	if u.cred == nil {
		return nil
	}
	return os.Lchown(path, u.uid, u.gid)
}

// writeFile writes a file owned by the server user.
func (u *osUser) writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	return u.chown(path)
}

// command prepares a server binary to run as the server user, in its own process group, with
// dir as working directory and a clean environment, and to be killed when this process dies.
func (u *osUser) command(dir, path string, args ...string) *exec.Cmd {
	cmd := exec.Command(path, args...)
	u.setup(cmd, dir)
	return cmd
}

// commandContext is command for a short-lived binary that is killed, with its process group,
// when ctx is done.
func (u *osUser) commandContext(ctx context.Context, dir, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	u.setup(cmd, dir)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (u *osUser) setup(cmd *exec.Cmd, dir string) {
	cmd.Dir = dir
	cmd.Env = childEnv(dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// run runs a server binary to completion and returns its output; the error carries the tail of
// the output.
func (u *osUser) run(ctx context.Context, dir, path string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := u.commandContext(ctx, dir, path, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", filepath.Base(path), err, tail(out.Bytes(), 20))
	}
	return out.Bytes(), nil
}

// childEnv is the environment of server binaries: this process's, without libpq and locale
// variables (a stray PGPORT or PGDATA must not redirect them; messages are parsed in English),
// with HOME set to home.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "LANG=C", "LC_ALL=C")
}

// newWorkDir creates a work directory under root, readable by the server user, with an owner
// file naming this process.
func newWorkDir(root, prefix string, u *osUser) (string, error) {
	dir, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return "", err
	}
	owner := fmt.Sprintf("%d %s\n", os.Getpid(), processStartTime(os.Getpid()))
	err = errors.Join(os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner), 0o644), os.Chmod(dir, 0o755), u.chown(dir))
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// processStartTime returns the start time of process pid in clock ticks since boot (field 22 of
// /proc/<pid>/stat), which tells a live process from a later one that reused its pid; "" if
// unknown.
func processStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	fields := procStatFields(b)
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}

// procStatFields returns the fields of /proc/<pid>/stat after the command name, starting with
// the state (field 3).
func procStatFields(stat []byte) []string {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(stat[i+1:]))
}

// processGone reports whether pid no longer runs: it does not exist, is a zombie, or (when start
// is not empty) is a different process that reused the pid.
func processGone(pid int, start string) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No /proc (or a race with the exit): kill(2) said it exists.
		return errors.Is(err, fs.ErrNotExist) && procAvailable()
	}
	fields := procStatFields(b)
	if len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X") {
		return true
	}
	return start != "" && len(fields) >= 20 && fields[19] != start
}

func procAvailable() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

// readOwner reads a work directory's owner file.
func readOwner(dir string) (pid int, start string, err error) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return 0, "", err
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, "", fmt.Errorf("empty owner file in %s", dir)
	}
	pid, err = strconv.Atoi(fields[0])
	if err != nil || pid <= 0 {
		return 0, "", fmt.Errorf("bad owner file in %s", dir)
	}
	if len(fields) > 1 {
		start = fields[1]
	}
	return pid, start, nil
}

// sweep removes the work directories under root whose creating process is gone, after stopping
// any postmaster still running in them. It is best effort: what it cannot remove stays.
func sweep(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !(strings.HasPrefix(name, serverDirPrefix) || strings.HasPrefix(name, buildDirPrefix)) {
			continue
		}
		dir := filepath.Join(root, name)
		pid, start, err := readOwner(dir)
		if err != nil {
			if fi, serr := os.Stat(dir); serr != nil || time.Since(fi.ModTime()) < orphanAge {
				continue
			}
		} else if !processGone(pid, start) {
			continue
		}
		_ = removeWorkDir(dir)
	}
}

// removeWorkDir stops the postmaster of a work directory's data directory, if one runs, and
// removes the directory.
func removeWorkDir(dir string) error {
	return errors.Join(stopStalePostmaster(filepath.Join(dir, dataDirName)), removeAll(dir))
}

// stopStalePostmaster stops the postmaster named in dataDir's postmaster.pid, but only if that
// process is a postgres whose command line names dataDir: SIGQUIT (immediate shutdown), then
// SIGKILL if it has not exited within a few seconds.
func stopStalePostmaster(dataDir string) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 || !isPostmasterOf(pid, dataDir) {
		return nil
	}
	start := processStartTime(pid)
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGQUIT, 5 * time.Second}, {syscall.SIGKILL, 3 * time.Second}} {
		if err := syscall.Kill(pid, step.sig); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if waitGone(pid, start, step.wait) {
			return nil
		}
	}
	return fmt.Errorf("stale postmaster %d of %s did not exit", pid, dataDir)
}

// waitGone polls until process pid is gone or d has passed.
func waitGone(pid int, start string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !processGone(pid, start) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// isPostmasterOf reports whether process pid runs the postgres binary with dataDir among its
// arguments. Without /proc it cannot tell and says no.
func isPostmasterOf(pid int, dataDir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if base := filepath.Base(args[0]); base != "postgres" && base != "postmaster" {
		return false
	}
	want := filepath.Clean(dataDir)
	for _, a := range args[1:] {
		if filepath.Clean(a) == want {
			return true
		}
	}
	return false
}

// removeAll removes dir, retrying briefly: a postgres child process that outlived a killed
// postmaster may still be creating files.
func removeAll(dir string) error {
	var err error
	for range 20 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("remove %s: %w", dir, err)
}

// copyTree copies the directory src to dst (which must not exist), keeping permission bits and
// giving the copy to the server user. (On the reference machine creating the thousand files of
// a data directory dominates; copying them in parallel did not help.)
func copyTree(src, dst string, u *osUser) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
			// Mkdir applies the umask.
			return errors.Join(os.Chmod(target, info.Mode().Perm()), u.chown(target))
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return errors.Join(os.Symlink(link, target), u.chown(target))
		case d.Type().IsRegular():
			return copyFile(path, target, info.Mode().Perm(), u)
		default:
			return nil // sockets and the like are not part of a data directory
		}
	})
}

// copyFile copies one file, with mode perm, owned by the server user.
func copyFile(src, dst string, perm os.FileMode, u *osUser) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(perm) // OpenFile applies the umask
	}
	if err == nil && u.cred != nil {
		err = out.Chown(u.uid, u.gid)
	}
	return errors.Join(err, out.Close())
}

// tail returns the last n lines of b, trimmed.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
