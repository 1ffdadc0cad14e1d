// A small custom auth check in Go: a request must carry one of the configured tokens in a
// header, or come with a verified client certificate (mTLS) whose subject is listed; the
// owner is passed upstream, and the token itself is not.
//
//	config = { header = "x-api-token", tokens = { "s3cret" = "alice" },
//	           subjects = { "CN=billing, O=Example" = "billing" } }
package main

import (
	"crypto/subtle"
	"fmt"
	"strings"

	"sluice.dev/pdk"
)

type config struct {
	Header string            `json:"header"`
	Tokens map[string]string `json:"tokens"`
	// Client certificate subjects (as ClientCert.Subject writes them) and their owners.
	Subjects map[string]string `json:"subjects"`
	// The header the owner's name is sent upstream in (default x-consumer).
	ConsumerHeader string `json:"consumer_header"`
}

type authCheck struct{ config }

func (a *authCheck) Phases() (request, response bool) { return true, false }

func (a *authCheck) OnRequest(req *sluice.Request) sluice.Action {
	token, ok := req.Header(a.Header)
	owner := ""
	if ok {
		// Compare against every token in constant time, so timing says nothing about which
		// prefix matched.
		for candidate, name := range a.Tokens {
			if subtle.ConstantTimeCompare([]byte(candidate), []byte(token)) == 1 {
				owner = name
			}
		}
	}
	if cert, ok := req.ClientCert(); owner == "" && ok {
		// The gateway verified the chain against the listener's client_ca; which
		// identities may call is this plugin's decision.
		owner = a.Subjects[cert.Subject]
	}
	if owner == "" {
		sluice.CounterAdd("denied", 1)
		sluice.Infof("denied %s %s: %s", req.Method(), req.Path(), map[bool]string{true: "unknown token", false: "no token"}[ok])
		return sluice.Respond(401, map[string]string{"content-type": "text/plain"},
			[]byte(fmt.Sprintf("missing or unknown %s\n", a.Header)))
	}
	_ = req.RemoveHeader(a.Header)
	_ = req.SetHeader(a.ConsumerHeader, owner)
	return sluice.Continue()
}

func (a *authCheck) OnResponse(*sluice.Request, *sluice.Response) {}

func init() {
	sluice.Register(func(raw []byte) (sluice.Plugin, error) {
		c := config{ConsumerHeader: "x-consumer"}
		if err := sluice.DecodeConfig(raw, &c); err != nil {
			return nil, err
		}
		if strings.TrimSpace(c.Header) == "" {
			return nil, fmt.Errorf("config.header: required (the header that carries the token)")
		}
		if len(c.Tokens) == 0 && len(c.Subjects) == 0 {
			return nil, fmt.Errorf("config.tokens: at least one token (or config.subjects) is required")
		}
		for token, owner := range c.Tokens {
			if len(token) < 8 {
				return nil, fmt.Errorf("config.tokens: the token for %q is shorter than 8 characters", owner)
			}
		}
		return &authCheck{c}, nil
	})
}

func main() {}
