package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Timeouts of server operations; a caller's context can only shorten them.
const (
	startTimeout    = 60 * time.Second // from launching a postmaster until it accepts connections
	stopTimeout     = 30 * time.Second // for a fast shutdown
	killTimeout     = 10 * time.Second // for an immediate shutdown, before SIGKILL
	closeStopBudget = 15 * time.Second // Close tries a fast shutdown this long, then kills
	portAttempts    = 5                // fresh ports tried when the chosen port was taken
	pollInterval    = 20 * time.Millisecond
)

// Server is a throwaway PostgreSQL server: a postmaster child process of this process, with its
// data directory, log and socket in a work directory of its own. It accepts TCP connections from
// 127.0.0.1 without a password for every user except the Options.PasswordRoles. Methods are safe
// for concurrent use; lifecycle changes (Restart, Stop, DemoteToStandby, Close) are serialised.
type Server struct {
	bin     string // directory of the server binaries
	user    *osUser
	dir     string // work directory
	dataDir string
	logPath string
	opts    Options
	port    int // set before the server is handed out, then fixed

	lifeMu sync.Mutex // serialises lifecycle changes
	closed bool       // guarded by lifeMu

	pmMu sync.Mutex
	pm   *postmaster // the running postmaster or nil; guarded by pmMu
}

// postmaster is one run of the postgres server process.
type postmaster struct {
	pid    int
	exited chan struct{} // closed when the process has exited and been reaped
}

// portInUseError reports that the postmaster could not bind its port.
type portInUseError struct{ port int }

func (e *portInUseError) Error() string { return fmt.Sprintf("port %d is already in use", e.port) }

// StartPrimary starts a new primary server on a free 127.0.0.1 port, from a copy of a cached
// initdb'd template, and blocks until it accepts connections (at most a minute, less if ctx ends
// sooner). If the port is taken before the server binds it, it retries on other ports. Errors
// wrap ErrNoServerBinaries when there are no server binaries, and carry the tail of the server
// log when the server did not come up; nothing is left behind on error. Close the server when
// done.
func StartPrimary(ctx context.Context, opts *Options) (*Server, error) {
	s, err := newServer(opts)
	if err != nil {
		return nil, fmt.Errorf("pgtest: start primary: %w", err)
	}
	err = func() error {
		root := filepath.Dir(s.dir)
		tmpl, err := templateDir(ctx, root, s.bin, s.user)
		if err != nil {
			return err
		}
		if err := copyTree(tmpl, s.dataDir, s.user); err != nil {
			return fmt.Errorf("copy template: %w", err)
		}
		if err := writeConf(s.dataDir, &s.opts, s.user); err != nil {
			return err
		}
		return s.startOnFreePort(ctx)
	}()
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("pgtest: start primary: %w", err)
	}
	return s, nil
}

// StartReplica starts a new streaming replica of s: a pg_basebackup of s (fast checkpoint, WAL
// streamed along), configured as a standby of s, started on a free port. Without
// Options.PasswordRoles of its own it requires passwords of the same roles as s. It blocks until
// the replica accepts connections, is in recovery and streams from s (at most a minute for each
// step, less if ctx ends sooner). On error nothing is left behind. Close the replica when done.
func (s *Server) StartReplica(ctx context.Context, opts *Options) (*Server, error) {
	r, err := newServer(opts)
	if err != nil {
		return nil, fmt.Errorf("pgtest: start replica of %s: %w", s.Name(), err)
	}
	if len(r.opts.PasswordRoles) == 0 {
		r.opts.PasswordRoles = s.opts.PasswordRoles // never changed after start
	}
	err = func() error {
		args := []string{"-h", s.Host(), "-p", strconv.Itoa(s.port), "-U", "postgres", "-w",
			"-D", r.dataDir, "-R", "-X", "stream", "-c", "fast"}
		if !r.opts.Fsync {
			args = append(args, "--no-sync")
		}
		bctx, cancel := context.WithTimeout(ctx, startTimeout)
		defer cancel()
		if _, err := r.user.run(bctx, r.dir, filepath.Join(r.bin, "pg_basebackup"), args...); err != nil {
			return err
		}
		if err := writeConf(r.dataDir, &r.opts, r.user); err != nil {
			return err
		}
		if err := writeStandbyConf(r.dataDir, s.port, r.user); err != nil {
			return err
		}
		if err := r.startOnFreePort(ctx); err != nil {
			return err
		}
		return r.waitStreaming(ctx, s)
	}()
	if err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("pgtest: start replica of %s: %w", s.Name(), err)
	}
	return r, nil
}

// newServer finds the binaries and creates the work directory of a server that is not started.
func newServer(opts *Options) (*Server, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	u, err := serverUser()
	if err != nil {
		return nil, err
	}
	root, err := ensureRoot()
	if err != nil {
		return nil, err
	}
	dir, err := newWorkDir(root, serverDirPrefix, u)
	if err != nil {
		return nil, fmt.Errorf("create server directory: %w", err)
	}
	return &Server{
		bin:     bin,
		user:    u,
		dir:     dir,
		dataDir: filepath.Join(dir, dataDirName),
		logPath: filepath.Join(dir, "postgres.log"),
		opts:    o,
	}, nil
}

// Host returns the address the server listens on, "127.0.0.1".
func (s *Server) Host() string { return "127.0.0.1" }

// Port returns the TCP port the server listens on; it stays the same across restarts.
func (s *Server) Port() int { return s.port }

// Name returns a short label for logs, "pg-<port>".
func (s *Server) Name() string { return fmt.Sprintf("pg-%d", s.port) }

// DataDir returns the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// LogPath returns the path of the server's log file.
func (s *Server) LogPath() string { return s.logPath }

// ConnString returns a URL to connect to database on the server as "postgres", without TLS:
// "postgres://postgres@127.0.0.1:<port>/<database>?sslmode=disable". An empty database means
// "postgres".
func (s *Server) ConnString(database string) string { return connString(s.Host(), s.port, database) }

func connString(host string, port int, database string) string {
	if database == "" {
		database = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable",
		net.JoinHostPort(host, strconv.Itoa(port)), url.PathEscape(database))
}

// Restart shuts the server down (fast) and starts it again on the same port, blocking until it
// accepts connections. A stopped or killed server is just started. It fails if the port was
// taken meanwhile, and after Close.
func (s *Server) Restart(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return fmt.Errorf("pgtest: restart %s: server is closed", s.Name())
	}
	if err := s.stop(ctx); err != nil {
		return fmt.Errorf("pgtest: restart %s: %w", s.Name(), err)
	}
	if err := s.start(ctx, s.port); err != nil {
		return fmt.Errorf("pgtest: restart %s: %w", s.Name(), err)
	}
	return nil
}

// Stop shuts the server down in "fast" mode (clients are disconnected, a shutdown checkpoint is
// written) and blocks until the postmaster has exited, at most 30 s or until ctx ends; then it
// returns an error and the shutdown goes on. Stopping a stopped server does nothing.
func (s *Server) Stop(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if err := s.stop(ctx); err != nil {
		return fmt.Errorf("pgtest: stop %s: %w", s.Name(), err)
	}
	return nil
}

// Kill shuts the server down in "immediate" mode (SIGQUIT to the postmaster: no checkpoint,
// crash recovery at the next start), and SIGKILL if it has not exited after 10 s. It blocks until
// the postmaster has exited. Killing a stopped server does nothing. It does not wait for other
// lifecycle changes, so it also cuts a slow Stop short.
func (s *Server) Kill() error {
	if err := s.signalAndWait(context.Background(), syscall.SIGQUIT, killTimeout); err != nil {
		if err := s.signalAndWait(context.Background(), syscall.SIGKILL, killTimeout); err != nil {
			return fmt.Errorf("pgtest: kill %s: %w", s.Name(), err)
		}
	}
	return nil
}

// Close stops the server (fast, or killed if that takes more than 15 s) and removes its work
// directory, data included. It is idempotent; other methods fail afterwards.
func (s *Server) Close() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), closeStopBudget)
	defer cancel()
	if err := s.stop(ctx); err != nil {
		if err := s.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.port != 0 {
		releasePort(s.port)
	}
	// Keep the directory of a postmaster that would not die, for the sweep of a later run.
	if len(errs) == 0 {
		errs = append(errs, removeAll(s.dir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pgtest: close %s: %w", s.Name(), err)
	}
	return nil
}

// running returns the running postmaster, or nil.
func (s *Server) running() *postmaster {
	s.pmMu.Lock()
	defer s.pmMu.Unlock()
	if s.pm != nil {
		select {
		case <-s.pm.exited:
			s.pm = nil
		default:
		}
	}
	return s.pm
}

// stop shuts the postmaster down fast; the caller holds lifeMu.
func (s *Server) stop(ctx context.Context) error {
	return s.signalAndWait(ctx, syscall.SIGINT, stopTimeout)
}

// signalAndWait sends sig to the running postmaster, if any, and waits until it has exited, at
// most timeout or until ctx ends.
func (s *Server) signalAndWait(ctx context.Context, sig syscall.Signal, timeout time.Duration) error {
	pm := s.running()
	if pm == nil {
		return nil
	}
	if err := syscall.Kill(pm.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal postmaster %d: %w", pm.pid, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-pm.exited:
		s.running() // forget it
		return nil
	case <-timer.C:
		return fmt.Errorf("postmaster %d did not exit within %v of %v", pm.pid, timeout, sig)
	case <-ctx.Done():
		return fmt.Errorf("postmaster %d still running after %v: %w", pm.pid, sig, ctx.Err())
	}
}

// startOnFreePort starts the server on a free port, trying other ports when the chosen one was
// taken before the postmaster could bind it. It sets s.port.
func (s *Server) startOnFreePort(ctx context.Context) error {
	var err error
	for range portAttempts {
		var port int
		if port, err = reservePort(); err != nil {
			return err
		}
		err = s.start(ctx, port)
		var inUse *portInUseError
		if !errors.As(err, &inUse) {
			if err != nil {
				releasePort(port)
			} else {
				s.port = port
			}
			return err
		}
		releasePort(port)
	}
	return err
}

// start launches the postmaster on port and waits until it accepts connections. On failure the
// postmaster is stopped and the error carries the tail of the server log (also sent to Logf),
// or is a *portInUseError.
//
// postgres is run directly rather than through pg_ctl so that it is this process's child: it
// gets a parent-death signal (it goes down with a crashed test binary), it is reaped and its
// exit is seen at once, and its pid is known without reading postmaster.pid.
func (s *Server) start(ctx context.Context, port int) error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	fi, err := logFile.Stat()
	if err != nil {
		_ = logFile.Close()
		return err
	}
	logStart := fi.Size()
	_ = s.user.chown(s.logPath)

	// The socket goes into the work directory, unless its path would be too long for a Unix socket.
	socketDir := s.dir
	if len(socketDir)+len("/.s.PGSQL.65535") >= 100 {
		socketDir = ""
	}
	cmd := s.user.command(s.dir, filepath.Join(s.bin, "postgres"),
		"-D", s.dataDir,
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+socketDir,
		"-c", "cluster_name="+fmt.Sprintf("pg-%d", port),
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Immediate shutdown when this process dies; see Kill.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	err = cmd.Start()
	_ = logFile.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	pm := &postmaster{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(pm.exited)
	}()
	s.pmMu.Lock()
	s.pm = pm
	s.pmMu.Unlock()

	err = s.waitAccepting(ctx, port, pm)
	if err == nil {
		return nil
	}
	if kerr := s.signalAndWait(context.Background(), syscall.SIGQUIT, killTimeout); kerr != nil {
		_ = s.signalAndWait(context.Background(), syscall.SIGKILL, killTimeout)
	}
	logTail := s.logTail(logStart)
	if strings.Contains(logTail, "Address already in use") {
		return &portInUseError{port: port}
	}
	if s.opts.Logf != nil {
		s.opts.Logf("pgtest: postgres on port %d failed to start: %v; server log %s ends:\n%s", port, err, s.logPath, logTail)
	}
	return fmt.Errorf("postgres on port %d: %w; server log %s ends:\n%s", port, err, s.logPath, logTail)
}

// logTail returns the last lines the server logged since offset.
func (s *Server) logTail(offset int64) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return tail(b[offset:], 30)
}

// waitAccepting polls with real connection attempts until the postmaster pm, on port, accepts
// connections, at most startTimeout or until ctx ends.
func (s *Server) waitAccepting(ctx context.Context, port int, pm *postmaster) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	// A connection attempt to a port that something else holds can hang; end it when the
	// postmaster exits.
	go func() {
		select {
		case <-pm.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	var lastErr error
	for {
		select {
		case <-pm.exited:
			return errors.New("postgres exited during startup")
		default:
		}
		lastErr = s.checkServes(ctx, port)
		if lastErr == nil {
			return nil
		}
		timer := time.NewTimer(pollInterval)
		select {
		case <-pm.exited:
			timer.Stop()
			return errors.New("postgres exited during startup")
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("not accepting connections: %w (last attempt: %v)", ctx.Err(), lastErr)
		case <-timer.C:
		}
	}
}

// checkServes connects to port and checks that the server there is this one (its data
// directory is s.dataDir), not another that holds the port.
func (s *Server) checkServes(ctx context.Context, port int) error {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(actx, connString("127.0.0.1", port, "postgres")+"&application_name=pgtest")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(actx, "SHOW data_directory").ReadAll()
	if err != nil {
		return err
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 1 {
		return errors.New("unexpected result of SHOW data_directory")
	}
	if got := string(results[0].Rows[0][0]); filepath.Clean(got) != filepath.Clean(s.dataDir) {
		return fmt.Errorf("port %d is served by another server (data directory %s)", port, got)
	}
	return nil
}

// ports handed out by reservePort to servers of this process and not yet released, so that two
// servers started at the same time do not get the same port.
var ports struct {
	sync.Mutex
	inUse map[int]bool
}

// reservePort picks a free 127.0.0.1 TCP port that no other server of this process holds. The
// port is free when picked; something else may still take it before the server binds it.
func reservePort() (int, error) {
	ports.Lock()
	defer ports.Unlock()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("pick a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !ports.inUse[port] {
			if ports.inUse == nil {
				ports.inUse = make(map[int]bool)
			}
			ports.inUse[port] = true
			return port, nil
		}
	}
	return 0, errors.New("pick a free port: no port found")
}

func releasePort(port int) {
	ports.Lock()
	defer ports.Unlock()
	delete(ports.inUse, port)
}
