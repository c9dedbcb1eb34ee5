// Package migrations installs and upgrades skiplock's tables.
//
// The schema is a set of numbered SQL files embedded in the binary. A
// [Migrator] applies them under a PostgreSQL advisory lock, so any number of
// processes may call [Migrator.Up] at once when they start: each version is
// applied exactly once, in its own transaction, together with the row that
// records it. The schema name is configurable and is always quoted.
//
// Teams that run their own migration tool can use the same files instead:
// [FS] holds them in golang-migrate's layout (NNNN_name.up.sql and
// NNNN_name.down.sql) and [GooseFS] in goose's (NNNNN_name.sql with
// "-- +goose Up" and "-- +goose Down" sections). The statements are
// schema-unqualified; run them with search_path set to the schema that
// skiplock's queue is configured to use.
package migrations
