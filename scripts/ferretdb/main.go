// Command ferretdb-launcher runs an embedded FerretDB v1 (MongoDB wire protocol)
// backed by PostgreSQL (what scripts/services.sh starts by default) or SQLite (the
// flag default here, as it needs nothing else), for local development and tests of
// tidings, next to an indexer that adds the indexes FerretDB's own queries can use.
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
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// options are the launcher's command-line flags.
type options struct {
	listen        string
	dataDir       string
	handler       string
	postgresqlURL string
	indexInterval time.Duration
	indexFields   []string
}

// main parses the flags, sets up logging and exits non-zero when FerretDB cannot run.
func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data", ".data/ferretdb", "SQLite data folder (created if missing; -handler sqlite only)")
	handler := flag.String("handler", "sqlite", "storage backend: sqlite or postgresql")
	postgresqlURL := flag.String("postgresql-url", "",
		"PostgreSQL URL for -handler postgresql, e.g. postgres://USER@127.0.0.1:5433/ferretdb?plan_cache_mode=force_custom_plan")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	indexInterval := flag.Duration("index-interval", time.Second,
		"how often the indexer looks for FerretDB tables that lack our indexes (0 turns the indexer off)")
	indexFields := flag.String("index-fields", strings.Join(defaultIndexFields, ","),
		"top-level fields that get a GIN index on PostgreSQL, besides _id (comma-separated; ignored on SQLite)")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: invalid -log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}

	fields, err := parseIndexFields(*indexFields)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: invalid -index-fields: %v\n", err)
		os.Exit(2)
	}

	o := options{
		listen:        *listen,
		dataDir:       *dataDir,
		handler:       *handler,
		postgresqlURL: *postgresqlURL,
		indexInterval: *indexInterval,
		indexFields:   fields,
	}

	switch {
	case o.handler != "sqlite" && o.handler != "postgresql":
		fmt.Fprintf(os.Stderr, "ferretdb: invalid -handler %q: sqlite or postgresql\n", o.handler)
		os.Exit(2)
	case o.handler == "postgresql" && o.postgresqlURL == "":
		fmt.Fprintln(os.Stderr, "ferretdb: -handler postgresql needs -postgresql-url")
		os.Exit(2)
	case o.indexInterval < 0:
		fmt.Fprintln(os.Stderr, "ferretdb: -index-interval must not be negative")
		os.Exit(2)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	if err := run(o, logger); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}
}

// run starts FerretDB and the indexer, and returns once a signal has stopped both.
func run(o options, logger *slog.Logger) error {
	conf := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: o.listen},
		Logger:   logger,
		Handler:  o.handler,
	}

	var ix indexBackend

	switch o.handler {
	case "sqlite":
		dir, err := filepath.Abs(o.dataDir)
		if err != nil {
			return fmt.Errorf("data folder %q: %w", o.dataDir, err)
		}

		if err = os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating data folder: %w", err)
		}

		// The SQLite URL must point at a folder and end with a slash.
		conf.SQLiteURL = "file:" + strings.TrimSuffix(dir, "/") + "/"
		ix = newSQLiteIndexer(dir, logger)

	case "postgresql":
		conf.PostgreSQLURL = o.postgresqlURL

		var err error
		if ix, err = newPostgreSQLIndexer(o.postgresqlURL, o.indexFields, logger); err != nil {
			return fmt.Errorf("-postgresql-url: %w", err)
		}
	}

	f, err := ferretdb.New(conf)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The PostgreSQL URL is not logged: it may hold a password.
	logger.Info("FerretDB starting", "listen", o.listen, "handler", o.handler, "sqlite", conf.SQLiteURL)

	var wg sync.WaitGroup

	if o.indexInterval > 0 {
		wg.Add(1)

		go func() {
			defer wg.Done()
			runIndexer(ctx, ix, o.indexInterval, logger)
		}()
	}

	// Run blocks until ctx is cancelled, then closes the listener, all
	// connections and the backend.
	err = f.Run(ctx)

	// The indexer stops with FerretDB, whatever made Run return.
	stop()
	wg.Wait()
	ix.close()

	if err != nil {
		return err
	}

	logger.Info("FerretDB stopped")

	return nil
}
