package authsvc

import (
	"context"
	"fmt"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/auth"
	"google.golang.org/api/option"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// firebaseVerifier checks Firebase ID tokens with the Admin SDK.
type firebaseVerifier struct {
	client *auth.Client
}

func newFirebaseVerifier(ctx context.Context, c FirebaseConfig) (*firebaseVerifier, error) {
	var opts []option.ClientOption
	if c.CredentialsFile != "" {
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, c.CredentialsFile))
	} else {
		// Verifying ID tokens needs only Google's public keys; without
		// credentials the SDK does not probe for ambient ones at start.
		opts = append(opts, option.WithoutAuthentication())
	}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: c.ProjectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("firebase app: %w", err)
	}
	client, err := app.Auth(ctx)
	if err != nil {
		return nil, fmt.Errorf("firebase auth client: %w", err)
	}
	return &firebaseVerifier{client: client}, nil
}

// Verify checks an ID token: signature (Google's keys), project (aud/iss),
// subject and times.
func (v *firebaseVerifier) Verify(ctx context.Context, token string) (api.VerifyReply, error) {
	if err := precheck(token); err != nil {
		return api.VerifyReply{}, err
	}
	tok, err := v.client.VerifyIDToken(ctx, token)
	if err != nil {
		switch {
		case auth.IsIDTokenExpired(err):
			return api.VerifyReply{}, reject("expired")
		case auth.IsIDTokenRevoked(err):
			return api.VerifyReply{}, reject("revoked")
		case auth.IsUserDisabled(err):
			return api.VerifyReply{}, reject("user disabled")
		case auth.IsIDTokenInvalid(err):
			return api.VerifyReply{}, reject("invalid")
		case auth.IsUserNotFound(err):
			return api.VerifyReply{}, reject("unknown user")
		}
		// Key fetch failures and the like: not the token's fault. The SDK's
		// messages name claims and URLs, never the token itself.
		return api.VerifyReply{}, fmt.Errorf("firebase verify: %w", err)
	}
	name, _ := tok.Claims["name"].(string)
	return identity(tok.UID, name, time.Unix(tok.Expires, 0))
}
