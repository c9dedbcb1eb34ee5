package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
)

// Limits of claims and leases.
const (
	MaxClaimSize     = 1000 // batches per claim
	MinLeaseDuration = time.Second
	MaxLeaseDuration = 24 * time.Hour
	MaxOwnerBytes    = 200
	reclaimLimit     = 1000 // expired leases reclaimed per statement
)

// ClaimParams describes one claim.
type ClaimParams struct {
	// Queue to claim from. Required.
	Queue string
	// Limit is the most batches to claim, 1..MaxClaimSize. Required.
	Limit int
	// Lease is how long the claim holds the batches unless extended,
	// MinLeaseDuration..MaxLeaseDuration. Required.
	Lease time.Duration
	// Owner is recorded with the lease for operators. Defaults to
	// "<hostname>/<pid>".
	Owner string
}

var defaultOwner = func() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}()

func validateClaim(p *ClaimParams) error {
	const op = "claim"
	if err := batch.ValidateQueueName(p.Queue); err != nil {
		return &ArgumentError{Op: op, Field: "Queue", Reason: err.Error(), Err: err}
	}
	if p.Limit < 1 || p.Limit > MaxClaimSize {
		return argError(op, "Limit", "%d is outside 1..%d", p.Limit, MaxClaimSize)
	}
	if err := validateLease(op, "Lease", p.Lease); err != nil {
		return err
	}
	if len(p.Owner) > MaxOwnerBytes || containsNUL(p.Owner) || !utf8.ValidString(p.Owner) {
		return argError(op, "Owner", "longer than %d bytes, not valid UTF-8 or contains NUL", MaxOwnerBytes)
	}
	return nil
}

func validateLease(op, field string, d time.Duration) error {
	if d < MinLeaseDuration || d > MaxLeaseDuration {
		return argError(op, field, "%s is outside %s..%s", d, MinLeaseDuration, MaxLeaseDuration)
	}
	return nil
}

// Claim takes up to p.Limit runnable batches of a queue in one round trip
// (SELECT ... FOR UPDATE SKIP LOCKED), in priority, run-at, id order, and
// leases them: each gets a fresh random token, the owner, an expiry p.Lease
// from the database's now, and one more attempt. It returns no batches, and
// no error, when nothing is runnable or the queue is paused. Batches whose
// lease expired become claimable again once ReclaimExpired (which every
// Runner calls periodically) has run.
func (c *Client) Claim(ctx context.Context, p ClaimParams) ([]batch.Batch, error) {
	if err := c.check("claim"); err != nil {
		return nil, err
	}
	if err := validateClaim(&p); err != nil {
		return nil, err
	}
	// A retried claim takes a fresh token. An attempt whose answer was lost
	// may have claimed batches under its token that no caller will ever
	// run: they are released by token afterwards, refunding the attempt.
	var out []batch.Batch
	var lost []int64
	start := time.Now()
	err := c.retry(ctx, "claim", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		token := newToken()
		var err error
		out, err = c.claim(ctx, p, token)
		if err != nil && !failedForSure(err) {
			lost = append(lost, token)
		}
		return err
	})
	if len(lost) > 0 {
		c.releaseLostClaims(ctx, p.Queue, lost, lostClaimLookback(start, p.Lease))
	}
	return out, err
}

// releaseLostClaims releases whatever claims under tokens whose answer was
// lost took, so that their batches are claimable at once with the attempt
// refunded (no handler ran for them). It runs beyond the caller's
// cancellation, within Config.RetryWindow; if it fails, those batches come
// back when their lease expires, with the attempt counted. The claims'
// lookback (see lostClaimLookback) bounds the leases it reads.
func (c *Client) releaseLostClaims(ctx context.Context, queue string, tokens []int64, lookback time.Duration) {
	ctx = context.WithoutCancel(ctx)
	var n int
	err := c.retry(ctx, "release lost claims", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		ids, err := idSet(c.db.Query(ctx, c.sql.releaseTokens, tokens, lookback.Microseconds()))
		n = len(ids)
		return err
	})
	if err != nil {
		c.log.Warn("could not release claims whose answer was lost; they return when their lease expires",
			zap.String("queue", queue), zap.Int("tokens", len(tokens)), zap.Error(err))
		return
	}
	if n > 0 {
		c.log.Info("released claims whose answer was lost", zap.String("queue", queue), zap.Int("batches", n))
	}
}

// lostClaimLookback is how far back the leases of claims sent since
// since with lease duration lease expire, at the earliest: the database
// set them to its now() plus lease, and its clock had not read since then
// yet (reclaimMargin covers the clocks' drift apart). Negative: not yet.
func lostClaimLookback(since time.Time, lease time.Duration) time.Duration {
	return time.Since(since) + reclaimMargin - lease
}

func (c *Client) claim(ctx context.Context, p ClaimParams, token int64) ([]batch.Batch, error) {
	owner := p.Owner
	if owner == "" {
		owner = defaultOwner
	}
	b := &pgx.Batch{}
	b.Queue(sqlNoJIT)
	b.Queue(c.sql.claim, p.Queue, p.Limit, token, owner, p.Lease.Microseconds())
	br := c.db.SendBatch(ctx, b)
	_, err := br.Exec() // sqlNoJIT
	var bs []batch.Batch
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			bs, err = collectBatches(rows, p.Limit, p.Queue)
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("claim %q: %w", short(p.Queue), err)
	}
	sortClaimed(bs)
	return bs, nil
}

// sortClaimed puts claimed batches in claim order (UPDATE ... RETURNING
// does not keep the order of the rows it picked).
func sortClaimed(bs []batch.Batch) {
	slices.SortFunc(bs, func(a, b batch.Batch) int {
		if a.Priority != b.Priority {
			return int(a.Priority) - int(b.Priority)
		}
		if c := a.RunAt.Compare(b.RunAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// refArrays returns the ids and tokens of refs as arrays sorted by id, so
// concurrent bulk statements lock rows in the same order.
func refArrays(refs []Ref) (ids, tokens []int64) {
	sorted := slices.Clone(refs)
	slices.SortFunc(sorted, func(a, b Ref) int { return cmp.Compare(a.ID, b.ID) })
	ids = make([]int64, len(sorted))
	tokens = make([]int64, len(sorted))
	for i, r := range sorted {
		ids[i], tokens[i] = r.ID, r.Token
	}
	return ids, tokens
}

// missing returns the refs whose id is not in done.
func missing(refs []Ref, done map[int64]bool) []Ref {
	var out []Ref
	for _, r := range refs {
		if !done[r.ID] {
			out = append(out, r)
		}
	}
	return out
}

func leaseLost(op string, r Ref) error {
	return fmt.Errorf("%s batch %d: %w", op, r.ID, ErrLeaseLost)
}

// single turns the result of a bulk call for one ref into an error.
func single(op string, r Ref, lost []Ref, err error) error {
	if err != nil {
		return err
	}
	if len(lost) > 0 {
		return leaseLost(op, r)
	}
	return nil
}

// Complete finishes a batch: it leaves the queue for good. It returns
// ErrLeaseLost if ref's token no longer holds the batch. Repeating a
// Complete that succeeded (for example after a connection error left its
// outcome unknown) returns nil, so Complete is safe to retry.
func (c *Client) Complete(ctx context.Context, ref Ref) error {
	lost, err := c.CompleteMany(ctx, []Ref{ref})
	return single("complete", ref, lost, err)
}

// CompleteTx is Complete inside the caller's transaction, so a handler can
// commit its own writes and the completion atomically.
func (c *Client) CompleteTx(ctx context.Context, tx pgx.Tx, ref Ref) error {
	if err := c.check("complete"); err != nil {
		return err
	}
	if tx == nil {
		return argError("complete", "tx", "nil")
	}
	lost, err := c.complete(ctx, tx, []Ref{ref})
	return single("complete", ref, lost, err)
}

// CompleteMany completes many batches in one statement. It returns the refs
// whose lease was lost (the others are complete); err is for the call as a
// whole, after which the outcome of each completion is unknown and the call
// can be repeated.
func (c *Client) CompleteMany(ctx context.Context, refs []Ref) (lost []Ref, err error) {
	if err := c.check("complete"); err != nil {
		return nil, err
	}
	err = c.retry(ctx, "complete", true, func(ctx context.Context) error {
		lost, err = c.complete(ctx, c.db, refs)
		return err
	})
	return lost, err
}

func (c *Client) complete(ctx context.Context, q querier, refs []Ref) ([]Ref, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	ids, tokens := refArrays(refs)
	done, err := idSet(q.Query(ctx, c.sql.complete, ids, tokens))
	if err != nil {
		return nil, fmt.Errorf("complete %d batches: %w", len(refs), err)
	}
	rest := missing(refs, done)
	if len(rest) == 0 {
		return nil, nil
	}
	return c.completeRepeat(ctx, q, rest)
}

// completeRepeat sorts completions the first statement did not apply into
// repeats of a completion under the same token (success) and lost leases.
func (c *Client) completeRepeat(ctx context.Context, q querier, refs []Ref) ([]Ref, error) {
	ids, tokens := refArrays(refs)
	rows, err := q.Query(ctx, c.sql.completeRepeat, ids, tokens)
	if err != nil {
		return nil, fmt.Errorf("complete: check %d repeats: %w", len(refs), err)
	}
	repeated := map[int64]bool{}
	var id int64
	var same bool
	_, err = pgx.ForEachRow(rows, []any{&id, &same}, func() error {
		if same {
			repeated[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("complete: check %d repeats: %w", len(refs), err)
	}
	return missing(refs, repeated), nil
}

// Failure is one failed batch for FailMany.
type Failure struct {
	Ref Ref
	// Err is recorded as the batch's last error (truncated to
	// batch.MaxLastErrorBytes). An error wrapped with Permanent dead-letters
	// the batch at once. Err's methods are not trusted: an Error or Unwrap
	// that panics (a nil *T returned as error) or does not return within
	// ErrorTextTimeout records a placeholder text naming Err's type instead
	// of panicking or blocking the caller.
	Err error
	// RetryAfter overrides the computed retry delay when positive.
	RetryAfter time.Duration
}

// FailResult reports what FailMany did.
type FailResult struct {
	Retried []int64 // scheduled for another attempt
	Dead    []int64 // dead-lettered: last attempt, or a Permanent error
	Lost    []Ref   // lease lost; nothing changed
}

// Fail records a failed attempt of a batch: it is retried after a delay
// growing exponentially with its attempts (Config.RetryBase, RetryMax, with
// jitter), or dead-lettered with cause as its last error when that was its
// last attempt or cause is Permanent. dead reports which. It returns
// ErrLeaseLost if ref's token no longer holds the batch.
func (c *Client) Fail(ctx context.Context, ref Ref, cause error) (dead bool, err error) {
	res, err := c.FailMany(ctx, []Failure{{Ref: ref, Err: cause}})
	if err != nil {
		return false, err
	}
	if len(res.Lost) > 0 {
		return false, leaseLost("fail", ref)
	}
	return len(res.Dead) > 0, nil
}

// FailTx is Fail inside the caller's transaction: the failure is recorded
// when tx commits, together with the caller's own writes. It is not
// retried.
func (c *Client) FailTx(ctx context.Context, tx pgx.Tx, ref Ref, cause error) (dead bool, err error) {
	if err := c.check("fail"); err != nil {
		return false, err
	}
	if tx == nil {
		return false, argError("fail", "tx", "nil")
	}
	text, perm := describeError(cause)
	res, err := c.fail(ctx, tx, []failRow{{Ref: ref, Text: text, Permanent: perm}})
	if err != nil {
		return false, err
	}
	if len(res.Lost) > 0 {
		return false, leaseLost("fail", ref)
	}
	return len(res.Dead) > 0, nil
}

// FailMany fails many batches in one statement; see Fail.
func (c *Client) FailMany(ctx context.Context, fs []Failure) (FailResult, error) {
	if err := c.check("fail"); err != nil {
		return FailResult{}, err
	}
	if len(fs) == 0 {
		return FailResult{}, nil
	}
	// The error text is computed once, before any round trip, without
	// trusting the errors (see describeError): an Error method that panics
	// or blocks gives a placeholder text instead of a panic or a hang here.
	rows := make([]failRow, len(fs))
	for i, f := range fs {
		text, perm := describeError(f.Err)
		rows[i] = failRow{Ref: f.Ref, Text: text, Permanent: perm, RetryAfter: f.RetryAfter}
	}
	var res FailResult
	err := c.retry(ctx, "fail", true, func(ctx context.Context) error {
		var err error
		res, err = c.fail(ctx, c.db, rows)
		return err
	})
	return res, err
}

func (c *Client) fail(ctx context.Context, q querier, rows []failRow) (FailResult, error) {
	n := len(rows)
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	failed, err := failedSet(q.Query(ctx, c.sql.fail, c.failArgs(rows)...))
	if err != nil {
		return FailResult{}, fmt.Errorf("fail %d batches: %w", n, err)
	}
	var res FailResult
	for _, f := range rows {
		dead, ok := failed[f.Ref.ID]
		switch {
		case !ok:
			res.Lost = append(res.Lost, f.Ref)
		case dead:
			res.Dead = append(res.Dead, f.Ref.ID)
		default:
			res.Retried = append(res.Retried, f.Ref.ID)
		}
	}
	return res, nil
}

// Extend renews a lease: it now expires lease from the database's now. It
// returns ErrLeaseLost if ref's token no longer holds the batch.
func (c *Client) Extend(ctx context.Context, ref Ref, lease time.Duration) error {
	lost, err := c.ExtendMany(ctx, []Ref{ref}, lease)
	return single("extend", ref, lost, err)
}

// ExtendMany renews many leases in one statement and returns the refs whose
// lease was lost. Extending is idempotent and safe to retry.
func (c *Client) ExtendMany(ctx context.Context, refs []Ref, lease time.Duration) (lost []Ref, err error) {
	if err := c.check("extend"); err != nil {
		return nil, err
	}
	if err := validateLease("extend", "lease", lease); err != nil {
		return nil, err
	}
	return c.updateLeases(ctx, "extend", c.sql.extend, refs, lease.Microseconds())
}

// Release gives a batch back without counting the attempt: it is claimable
// again at once, in its old place in line. It returns ErrLeaseLost if ref's
// token no longer holds the batch.
func (c *Client) Release(ctx context.Context, ref Ref) error {
	lost, err := c.ReleaseMany(ctx, []Ref{ref})
	return single("release", ref, lost, err)
}

// ReleaseTx is Release inside the caller's transaction: the batch is
// released when tx commits. It is not retried.
func (c *Client) ReleaseTx(ctx context.Context, tx pgx.Tx, ref Ref) error {
	if err := c.check("release"); err != nil {
		return err
	}
	if tx == nil {
		return argError("release", "tx", "nil")
	}
	lost, err := c.updateLeasesOnce(ctx, tx, "release", c.sql.release, []Ref{ref})
	return single("release", ref, lost, err)
}

// ReleaseMany releases many batches in one statement and returns the refs
// whose lease was lost.
func (c *Client) ReleaseMany(ctx context.Context, refs []Ref) (lost []Ref, err error) {
	if err := c.check("release"); err != nil {
		return nil, err
	}
	return c.updateLeases(ctx, "release", c.sql.release, refs)
}

func (c *Client) updateLeases(ctx context.Context, op, query string, refs []Ref, extra ...any) (lost []Ref, err error) {
	if len(refs) == 0 {
		return nil, nil
	}
	err = c.retry(ctx, op, true, func(ctx context.Context) error {
		lost, err = c.updateLeasesOnce(ctx, c.db, op, query, refs, extra...)
		return err
	})
	return lost, err
}

func (c *Client) updateLeasesOnce(ctx context.Context, q querier, op, query string, refs []Ref, extra ...any) ([]Ref, error) {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	ids, tokens := refArrays(refs)
	applied, err := idSet(q.Query(ctx, query, append([]any{ids, tokens}, extra...)...))
	if err != nil {
		return nil, fmt.Errorf("%s %d batches: %w", op, len(refs), err)
	}
	return missing(refs, applied), nil
}

// ReclaimExpired makes batches whose lease expired claimable again, or
// dead-letters them when that lease was their last attempt. An empty queue
// means every queue. It handles at most 1000 batches per call and reports
// how many it made available and how many it dead-lettered. Leases that a
// started Runner of this Client still holds (its handler runs, or its
// outcome waits to be acknowledged) are left alone even when they expired:
// that runner acknowledges, re-confirms or releases them itself once it
// reaches a writer. Reclaims through another Client (another process) take
// them like any other expired lease.
func (c *Client) ReclaimExpired(ctx context.Context, queue string) (available, dead int, err error) {
	return c.reclaimExpired(ctx, queue, reclaimAll, 0, nil)
}

// reclaimAll is a lookback that covers every lease there can be.
const reclaimAll = 100 * 365 * 24 * time.Hour

// errReclaimHeld ends a reclaim its hold function stopped.
var errReclaimHeld = errors.New("reclaim held off")

// reclaimExpired is ReclaimExpired for leases that expired within lookback
// and at least newer ago, retried like any operation. hold, if set, is
// asked before every attempt: when it says so, the call ends with
// errReclaimHeld instead of (re)trying (see Runner.holdReclaims).
func (c *Client) reclaimExpired(ctx context.Context, queue string, lookback, newer time.Duration, hold func() bool) (available, dead int, err error) {
	err = c.retry(ctx, "reclaim", true, func(ctx context.Context) error {
		if hold != nil && hold() {
			return errReclaimHeld
		}
		var err error
		available, dead, _, err = c.reclaimOnce(ctx, queue, lookback, newer, false)
		return err
	})
	return available, dead, err
}

// reclaimSlice is one attempt at reclaimExpired, for a slice of a sweep (a
// slice that failed is swept again, narrower, rather than repeated), and
// what it cost the server (see sweep).
func (c *Client) reclaimSlice(ctx context.Context, queue string, lookback, newer time.Duration, hold func() bool) (available, dead int, cost sliceCost, err error) {
	if hold != nil && hold() {
		return 0, 0, sliceCost{}, errReclaimHeld
	}
	return c.reclaimOnce(ctx, queue, lookback, newer, true)
}

// reclaimOnce makes one attempt at a reclaim; metered, it also reads what
// the reclaim cost the server.
func (c *Client) reclaimOnce(ctx context.Context, queue string, lookback, newer time.Duration, metered bool) (available, dead int, cost sliceCost, err error) {
	if err := c.check("reclaim"); err != nil {
		return 0, 0, cost, err
	}
	var q any
	if queue != "" {
		if err := batch.ValidateQueueName(queue); err != nil {
			return 0, 0, cost, &ArgumentError{Op: "reclaim", Field: "queue", Reason: err.Error(), Err: err}
		}
		q = queue
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	ids, tokens := c.heldRefs(queue)
	b := &pgx.Batch{}
	b.Queue(sqlNoJIT)
	if metered {
		b.Queue(c.sql.meter, c.sql.leaseIndex)
	}
	b.Queue(c.sql.reclaim, q, reclaimLimit, lookback.Microseconds(), ids, tokens, newer.Microseconds())
	if metered {
		b.Queue(c.sql.meter, c.sql.leaseIndex)
	}
	br := c.db.SendBatch(ctx, b)
	var before, after meterReading
	_, err = br.Exec() // sqlNoJIT
	if metered && err == nil {
		before, err = readMeter(br)
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var id int64
			var isDead bool
			_, err = pgx.ForEachRow(rows, []any{&id, &isDead}, func() error {
				if isDead {
					dead++
				} else {
					available++
				}
				return nil
			})
		}
	}
	if metered && err == nil {
		after, err = readMeter(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, cost, fmt.Errorf("reclaim expired leases: %w", err)
	}
	return available, dead, before.costTo(after), nil
}

// meterReading is one reading of sqlMeter.
type meterReading struct {
	entries int64
	at      time.Time
}

func readMeter(br pgx.BatchResults) (m meterReading, err error) {
	err = br.QueryRow().Scan(&m.entries, &m.at)
	return m, err
}

// costTo is what the statements between readings m and later cost.
func (m meterReading) costTo(later meterReading) sliceCost {
	c := sliceCost{entries: later.entries - m.entries, took: later.at.Sub(m.at)}
	if m.entries < 0 || later.entries < 0 {
		c.entries = -1
	}
	return c
}

// Completion identifies an acknowledged completion for ReassertCompleted:
// the claim's Ref and the batch's creation time (a batch id alone can name
// another batch on a writer that lost commits), and its queue and
// idempotency key, which name the batch even after a failover re-enqueued
// it under another id.
type Completion struct {
	Ref       Ref
	CreatedAt time.Time
	Queue     string
	Key       string // empty for a batch without an idempotency key
	Attempt   int    // the attempt that completed it
}

// ReassertCompleted asserts completions that an earlier writer
// acknowledged on the current one, which may have lost them (a failover to
// an asynchronous replica). A batch is found by id and creation time, or by
// queue and idempotency key (a re-asserted enqueue can carry another id),
// and finished whatever its state: it was completed, so a claim the new
// writer handed out since is a duplicate run, whose acknowledgements then
// report ErrLeaseLost. The key of a keyed completion is recorded as known,
// so a later re-assertion of its enqueue adds nothing. Batches already
// finished are left alone. It returns how many batches it finished, i.e.
// how many completions the writer had lost. Runners call it after every
// writer change for their journaled completions.
func (c *Client) ReassertCompleted(ctx context.Context, refs []Completion) (restored int, err error) {
	if err := c.check("reassert"); err != nil {
		return 0, err
	}
	if len(refs) == 0 {
		return 0, nil
	}
	err = c.retry(ctx, "reassert completions", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		sorted := slices.Clone(refs)
		slices.SortFunc(sorted, func(a, b Completion) int { return cmp.Compare(a.Ref.ID, b.Ref.ID) })
		n := len(sorted)
		ids, tokens, created := make([]int64, n), make([]int64, n), make([]time.Time, n)
		queues, keys, attempts := make([]string, n), make([]string, n), make([]int32, n)
		for i, r := range sorted {
			ids[i], tokens[i], created[i] = r.Ref.ID, r.Ref.Token, r.CreatedAt
			queues[i], keys[i], attempts[i] = r.Queue, r.Key, int32(max(r.Attempt, 1))
		}
		// Two statements in one pipelined batch, which runs as one implicit
		// transaction in one round trip: the first claims missing keys
		// (waiting for an enqueue of the same key re-asserted concurrently),
		// the second, with a snapshot taken after that, finishes or records
		// the batches. Apart, a key claimed without its completion record
		// would hide the batch for good.
		b := &pgx.Batch{}
		b.Queue(c.sql.reassertKeys, queues, keys, c.sql.sequence)
		b.Queue(c.sql.reassertComplete, ids, tokens, created, queues, keys, attempts, c.sql.sequence)
		br := c.db.SendBatch(ctx, b)
		_, err := br.Exec()
		if err == nil {
			var rows pgx.Rows
			if rows, err = br.Query(); err == nil {
				var recorded []int64
				recorded, err = pgx.CollectRows(rows, pgx.RowTo[int64])
				restored = len(recorded)
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("reassert %d completions: %w", len(refs), err)
		}
		return nil
	})
	return restored, err
}

// heldLease is one lease a runner holds, for reconfirmLeases.
type heldLease struct {
	Ref       Ref
	CreatedAt time.Time
	Retake    bool // re-take the batch if the writer has it available with no lease
}

// reconfirmLeases extends the leases in held that are still held and
// re-takes those flagged batches the writer has available with no lease
// (claims a failover lost), in one statement and one attempt (callers
// retry). It returns the refs kept, and which of them were re-taken; a ref
// in neither is lost.
func (c *Client) reconfirmLeases(ctx context.Context, held []heldLease, lease time.Duration, owner string) (kept, retaken map[Ref]bool, err error) {
	n := len(held)
	ids, tokens := make([]int64, n), make([]int64, n)
	created, retake := make([]time.Time, n), make([]bool, n)
	sorted := slices.Clone(held)
	slices.SortFunc(sorted, func(a, b heldLease) int { return cmp.Compare(a.Ref.ID, b.Ref.ID) })
	for i, h := range sorted {
		ids[i], tokens[i], created[i], retake[i] = h.Ref.ID, h.Ref.Token, h.CreatedAt, h.Retake
	}
	rows, err := c.db.Query(ctx, c.sql.reconfirm, ids, tokens, created, retake, lease.Microseconds(), owner)
	if err != nil {
		return nil, nil, fmt.Errorf("reconfirm %d leases: %w", n, err)
	}
	kept, retaken = make(map[Ref]bool, n), map[Ref]bool{}
	var ref Ref
	var again bool
	_, err = pgx.ForEachRow(rows, []any{&ref.ID, &ref.Token, &again}, func() error {
		kept[ref] = true
		if again {
			retaken[ref] = true
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reconfirm %d leases: %w", n, err)
	}
	return kept, retaken, nil
}
