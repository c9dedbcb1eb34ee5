package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuUse is CPU time spent so far by this process (and its waited-for
// children, such as pgbench) and by the throwaway server's processes.
type cpuUse struct {
	client, server time.Duration
	serverKnown    bool
}

// clockTick is Linux's USER_HZ, the unit of /proc/<pid>/stat times.
const clockTick = 10 * time.Millisecond

// cpuNow samples CPU use. The server's share is known only for a server
// the harness started: the postmaster and its children, including the
// children it has already reaped (cutime, cstime).
func (e *env) cpuNow() cpuUse {
	var u cpuUse
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			u.client += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	if e.srv == nil {
		return u
	}
	pid := postmasterPID(e.srv.DataDir())
	if pid <= 0 {
		return u
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return u
	}
	for _, p := range procs {
		n, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		f := procStat(n)
		if len(f) < 17 {
			continue
		}
		ppid, _ := strconv.Atoi(f[3])
		if n != pid && ppid != pid {
			continue
		}
		ticks := atoi(f[13]) + atoi(f[14])
		if n == pid {
			ticks += atoi(f[15]) + atoi(f[16])
		}
		u.server += time.Duration(ticks) * clockTick
		u.serverKnown = true
	}
	return u
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{client: u.client - v.client, server: u.server - v.server, serverKnown: u.serverKnown && v.serverKnown}
}

// perRow returns client and server CPU microseconds per row (server -1
// when unknown).
func (u cpuUse) perRow(rows int) (client, server float64) {
	if rows <= 0 {
		return 0, -1
	}
	client = float64(u.client.Microseconds()) / float64(rows)
	server = -1
	if u.serverKnown {
		server = float64(u.server.Microseconds()) / float64(rows)
	}
	return client, server
}

func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return atoi(strings.TrimSpace(first))
}

// procStat returns the fields of /proc/<pid>/stat after the command name
// (field 3, the state, is index 2).
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return append([]string{"pid", "comm"}, strings.Fields(s[i+1:])...)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
