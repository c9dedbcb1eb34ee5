package queue

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/batch"
)

// The acknowledgement builder: the arguments of the complete, fail and
// release statements and the reading of their results, shared by Client
// (Complete, Fail, Release and their bulk forms) and the Runner's round
// trip.

// failRow is one failure as the fail statement takes it: the error already
// turned into its stored text (see describeError).
type failRow struct {
	Ref        Ref
	Text       string
	Permanent  bool
	RetryAfter time.Duration
}

// acks is one round trip's acknowledgements.
type acks struct {
	completes []Ref
	fails     []failRow
	releases  []Ref
}

// ackResult is what the database did with acks.
type ackResult struct {
	completed map[int64]bool // ids completed
	failed    map[int64]bool // ids failed -> dead-lettered
	released  map[int64]bool // ids released
}

// queue adds the statements of a to b, in the order read reads them.
func (a *acks) queue(c *Client, b *pgx.Batch) {
	if len(a.completes) > 0 {
		ids, tokens := refArrays(a.completes)
		b.Queue(c.sql.complete, ids, tokens)
	}
	if len(a.fails) > 0 {
		b.Queue(c.sql.fail, c.failArgs(a.fails)...)
	}
	if len(a.releases) > 0 {
		ids, tokens := refArrays(a.releases)
		b.Queue(c.sql.release, ids, tokens)
	}
}

// read reads the results of the statements queue added.
func (a *acks) read(br pgx.BatchResults) (res ackResult, err error) {
	if len(a.completes) > 0 {
		if res.completed, err = idSet(br.Query()); err != nil {
			return res, err
		}
	}
	if len(a.fails) > 0 {
		if res.failed, err = failedSet(br.Query()); err != nil {
			return res, err
		}
	}
	if len(a.releases) > 0 {
		if res.released, err = idSet(br.Query()); err != nil {
			return res, err
		}
	}
	return res, nil
}

// idSet collects the ids a complete, release or extend statement returns.
// It takes Query's results as they are, so it can be given br.Query().
func idSet(rows pgx.Rows, err error) (map[int64]bool, error) {
	if err != nil {
		return nil, err
	}
	set := map[int64]bool{}
	var id int64
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		set[id] = true
		return nil
	})
	return set, err
}

// failedSet collects the (id, dead) rows of the fail statement.
func failedSet(rows pgx.Rows, err error) (map[int64]bool, error) {
	if err != nil {
		return nil, err
	}
	set := map[int64]bool{}
	var id int64
	var dead bool
	_, err = pgx.ForEachRow(rows, []any{&id, &dead}, func() error {
		set[id] = dead
		return nil
	})
	return set, err
}

// failArgs returns the parameters of the fail statement for fs, sorted by
// batch id.
func (c *Client) failArgs(fs []failRow) []any {
	sorted := slices.Clone(fs)
	slices.SortFunc(sorted, func(a, b failRow) int { return cmp.Compare(a.Ref.ID, b.Ref.ID) })
	n := len(sorted)
	ids, tokens := make([]int64, n), make([]int64, n)
	msgs, perm := make([]string, n), make([]bool, n)
	delays := make([]*int64, n)
	for i, f := range sorted {
		ids[i], tokens[i] = f.Ref.ID, f.Ref.Token
		msgs[i], perm[i] = f.Text, f.Permanent
		if f.RetryAfter > 0 {
			us := f.RetryAfter.Microseconds()
			delays[i] = &us
		}
	}
	return []any{ids, tokens, msgs, perm, c.cfg.RetryBase.Microseconds(), c.cfg.RetryMax.Microseconds(), delays}
}

// ErrorTextTimeout bounds how long the text of a failure's error is waited
// for: an Error method (or Unwrap, for IsPermanent) that has not returned by
// then is left running on its own goroutine, and the failure is recorded
// with a placeholder text naming the error's type.
const ErrorTextTimeout = time.Second

// describeError returns the last_error text stored for err and whether err
// is Permanent, without trusting err: its Error and Unwrap methods run on a
// goroutine of their own under recover, and are waited for at most
// ErrorTextTimeout. A method that panics (typically a nil *T returned as
// error) or does not return in time gives a placeholder text naming the
// type. The text is made storable and cut to batch.MaxLastErrorBytes by
// batch.TruncateError.
func describeError(err error) (text string, permanent bool) {
	if err == nil {
		return "failed without an error", false
	}
	type result struct {
		text      string
		permanent bool
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() {
			if p := recover(); p != nil {
				res.text = fmt.Sprintf("error text unavailable: Error or Unwrap of %s panicked: %s", typeName(err), panicText(p))
			}
			done <- res
		}()
		res.permanent = IsPermanent(err)
		res.text = err.Error()
	}()
	t := time.NewTimer(ErrorTextTimeout)
	defer t.Stop()
	select {
	case res := <-done:
		return batch.TruncateError(res.text), res.permanent
	case <-t.C:
		return batch.TruncateError(fmt.Sprintf("error text unavailable: Error or Unwrap of %s did not return within %s", typeName(err), ErrorTextTimeout)), false
	}
}

// typeName names v's dynamic type without calling any of its methods.
func typeName(v any) string {
	if v == nil {
		return "<nil>"
	}
	return reflect.TypeOf(v).String()
}

// panicText formats a recovered panic value. fmt recovers panics of the
// value's own methods; a value that is an error or Stringer is otherwise
// described by type only, so no method of it can block here.
func panicText(p any) string {
	switch v := p.(type) {
	case string:
		return batch.TruncateError(v)
	case error, fmt.Stringer:
		return "a value of type " + typeName(v)
	default:
		return batch.TruncateError(fmt.Sprintf("%v", v))
	}
}
