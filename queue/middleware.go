package queue

import "fmt"

// MiddlewareFunc wraps a runner's handler: it gets the next handler in the
// chain and returns one that calls it (or not). It is where metrics,
// tracing and logging see each batch, its context, its error and how long
// it took. The wrapped handler runs exactly where the plain handler would:
// on a worker goroutine, inside the runner's protection, so a middleware
// that panics, calls runtime.Goexit or never returns is treated like a
// handler doing it (the attempt fails, the worker is replaced, the handler
// is abandoned after RunnerConfig.HandlerGrace), and its context is the
// handler's (cancelled on shutdown, lease loss, fence or timeout).
type MiddlewareFunc func(next HandlerFunc) HandlerFunc

// chainHandler returns h wrapped by mws, the first outermost. A middleware
// that returns nil or panics while wrapping is reported as an
// *ArgumentError naming its index.
func chainHandler(h HandlerFunc, mws []MiddlewareFunc) (_ HandlerFunc, err error) {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] == nil {
			return nil, argError("runner config", fmt.Sprintf("Middleware[%d]", i), "nil")
		}
		h, err = wrapOnce(mws[i], h, i)
		if err != nil {
			return nil, err
		}
	}
	return h, nil
}

func wrapOnce(mw MiddlewareFunc, next HandlerFunc, i int) (h HandlerFunc, err error) {
	defer func() {
		if p := recover(); p != nil {
			h, err = nil, argError("runner config", fmt.Sprintf("Middleware[%d]", i), "panicked while wrapping: %s", panicText(p))
		}
	}()
	if h = mw(next); h == nil {
		return nil, argError("runner config", fmt.Sprintf("Middleware[%d]", i), "returned a nil HandlerFunc")
	}
	return h, nil
}
