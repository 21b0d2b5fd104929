// Command ferretdb-launcher runs an embedded FerretDB v1 (MongoDB wire protocol)
// backed by SQLite, for local development and tests of tidings.
//
// A plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb` binary panics at
// start because build/version/version.txt is not part of the module; embedding the
// github.com/FerretDB/FerretDB/ferretdb package from our own module avoids that.
// Telemetry is never started by the embeddable package (and is explicitly disabled).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data", ".data/ferretdb", "SQLite data folder (created if missing)")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: invalid -log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	if err := run(*listen, *dataDir, logger); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, dataDir string, logger *slog.Logger) error {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("data folder %q: %w", dataDir, err)
	}

	if err = os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating data folder: %w", err)
	}

	// The SQLite URL must point at a folder and end with a slash.
	sqliteURL := "file:" + strings.TrimSuffix(dir, "/") + "/"

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logger.Info("FerretDB starting", "listen", listen, "sqlite", sqliteURL)

	// Run blocks until ctx is cancelled, then closes the listener, all
	// connections and the SQLite backend.
	if err = f.Run(ctx); err != nil {
		return err
	}

	logger.Info("FerretDB stopped")

	return nil
}
