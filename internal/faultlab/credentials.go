package faultlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// RoleDefault is the password-authenticated role of rotating credentials; start the cluster
// with pgtest.Options{PasswordRoles: []string{RoleDefault}}.
const RoleDefault = "faultlab_app"

// credentials is the current password of the rotating role, as a token service would hand it
// out (IAM-token style).
type credentials struct {
	role string
	mu   sync.Mutex // held across a rotation, and across a promotion's re-apply
	pw   string
	n    int
}

func newPassword() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// EnableCredentials makes the endpoint's pool configuration (PoolConfig, NewPool) log in as
// role with a password fetched by a BeforeConnect hook at every connection attempt. The role
// must be one of the servers' Options.PasswordRoles. It sets a first password on the writer
// and makes the role a superuser (it runs migrations-free queue work, vacuum included).
func (c *Cluster) EnableCredentials(ctx context.Context, role string) error {
	cr := &credentials{role: role, pw: newPassword()}
	w := c.Writer()
	if err := c.Nodes[w].SetRolePassword(ctx, role, cr.pw); err != nil {
		return err
	}
	if _, err := c.direct[w].Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" SUPERUSER"); err != nil {
		return fmt.Errorf("faultlab: make %s a superuser: %w", role, err)
	}
	c.mu.Lock()
	c.creds = cr
	c.mu.Unlock()
	return nil
}

// Password returns the current password of the rotating role ("" without EnableCredentials).
func (c *Cluster) Password() string {
	cr := c.credentials()
	if cr == nil {
		return ""
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.pw
}

func (c *Cluster) credentials() *credentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.creds
}

// RotatePassword sets a new password for the rotating role on the writer; the old one stops
// working for new connections at once. Rotations counts them.
func (c *Cluster) RotatePassword(ctx context.Context) error {
	cr := c.credentials()
	if cr == nil {
		return fmt.Errorf("faultlab: rotate password: credentials are not enabled")
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	pw := newPassword()
	if err := c.Nodes[c.Writer()].SetRolePassword(ctx, cr.role, pw); err != nil {
		return err
	}
	cr.pw = pw
	cr.n++
	return nil
}

// Rotations returns how many times the password was rotated.
func (c *Cluster) Rotations() int {
	cr := c.credentials()
	if cr == nil {
		return 0
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.n
}

// promote promotes node i and makes it the writer. With rotating credentials, the current
// password is applied on it again: a rotation on the old writer may not have replicated.
func (c *Cluster) promote(ctx context.Context, i int) error {
	if err := c.Nodes[i].Promote(ctx); err != nil {
		return err
	}
	return c.writable(ctx, i)
}

// writable makes node i, already writable again, the writer. With rotating credentials, the
// current password is applied on it again: rotations made while another node was the writer
// are lost with that node's commits.
func (c *Cluster) writable(ctx context.Context, i int) error {
	c.setWriter(i)
	if cr := c.credentials(); cr != nil {
		cr.mu.Lock()
		defer cr.mu.Unlock()
		return c.Nodes[i].SetRolePassword(ctx, cr.role, cr.pw)
	}
	return nil
}
