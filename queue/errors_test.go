package queue_test

import "errors"

var errTest = errors.New("test failure")
