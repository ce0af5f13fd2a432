package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// jobKey names a job: one module on one kernel.
type jobKey struct{ module, kernel string }

// scheduler runs a batch's jobs at the same time as far as dependencies
// and the job budget allow: a job starts when the jobs it depends on
// (same kernel) have ended; builds of one module version take turns
// (they share its build dir); every make draws from one jobserver. A
// build the out-of-memory killer stopped is built again, alone, once the
// other jobs are over.
type scheduler struct {
	e    *Env
	jobs []*job
	// deps are, for each job, the jobs of this run it waits for.
	deps     [][]int
	finished []chan struct{}
	rep      *replay
	js       *Jobserver
	budget   jobBudget
	slots    chan struct{}

	mu sync.Mutex
	// changed is signalled when a result, deferred or retrying changes.
	changed *sync.Cond
	results []*JobResult
	// deferred marks the jobs killed by the OOM killer that wait to be
	// retried; retrying is set while one is.
	deferred []bool
	retrying bool
	locks    map[string]*sync.Mutex
}

// runJobs runs jobs (see scheduler) and then depmod, once per kernel.
func (e *Env) runJobs(ctx context.Context, jobs []*job) *Summary {
	// Every job reports through one serialized sink; each job's dkms text
	// is replayed in dkms's order once it is over.
	serial := &serialSink{sink: e.Sink}
	be := *e
	be.Sink = serial
	e = &be
	s := newScheduler(e, jobs, newReplay(serial, jobs))
	s.js = e.Jobserver
	if s.js == nil {
		var err error
		if s.js, err = NewJobserver(s.budget.Jobs); err == nil {
			defer s.js.Close()
		}
	}
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx, i)
		}()
	}
	wg.Wait()
	e.depmodAfter(ctx, jobs, s.results)
	sum := &Summary{}
	for _, r := range s.results {
		sum.Results = append(sum.Results, *r)
	}
	return sum
}

// newScheduler indexes the jobs' dependencies and sets the budget: the
// CPU budget, lowered to what memory allows the largest of the modules
// to build (shown under --verbose).
func newScheduler(e *Env, jobs []*job, rep *replay) *scheduler {
	s := &scheduler{e: e, jobs: jobs, rep: rep, deps: make([][]int, len(jobs)), finished: make([]chan struct{}, len(jobs)),
		results: make([]*JobResult, len(jobs)), deferred: make([]bool, len(jobs)), locks: map[string]*sync.Mutex{}}
	s.changed = sync.NewCond(&s.mu)
	index := map[jobKey]int{}
	for i, j := range jobs {
		index[jobKey{j.Module, j.Kernel}] = i
		s.finished[i] = make(chan struct{})
	}
	var modules []string
	for i, j := range jobs {
		for _, d := range j.deps {
			if k, ok := index[jobKey{d, j.Kernel}]; ok {
				s.deps[i] = append(s.deps[i], k)
			}
		}
		if j.settled == nil && !slices.Contains(modules, j.Module) {
			modules = append(modules, j.Module)
		}
	}
	s.budget = e.budgetFor(max(1, e.Jobs), modules)
	if e.Verbose && len(modules) > 0 {
		e.info("%s", s.budget)
	}
	s.slots = make(chan struct{}, max(1, s.budget.Jobs))
	return s
}

// run settles job i: it waits for its dependencies, builds and installs
// it, and hands its text to the replay.
func (s *scheduler) run(ctx context.Context, i int) {
	j := s.jobs[i]
	res := j.settled
	if res == nil {
		res = s.waitForDeps(ctx, i)
	}
	var text []Event
	if res == nil {
		res, text = s.build(ctx, i)
	} else if res.Outcome != OutcomeAlreadyInstalled {
		s.e.Sink.Emit(Event{Type: JobFinished, Module: j.Module, Version: j.Version, Kernel: j.Kernel, Arch: j.Arch,
			Text: string(res.Outcome), Err: errors.New(res.Reason)})
	}
	s.rep.done(i, text)
	s.mu.Lock()
	s.results[i] = res
	s.changed.Broadcast()
	s.mu.Unlock()
	close(s.finished[i])
}

// waitForDeps waits until the jobs job i depends on have ended; it
// returns a result when i cannot be built because one of them failed.
func (s *scheduler) waitForDeps(ctx context.Context, i int) *JobResult {
	j := s.jobs[i]
	for _, d := range s.deps[i] {
		select {
		case <-s.finished[d]:
		case <-ctx.Done():
			return &JobResult{Target: j.Target, Outcome: OutcomeFailed, Reason: "interrupted", Err: ctx.Err()}
		}
		s.mu.Lock()
		r := s.results[d]
		s.mu.Unlock()
		switch r.Outcome {
		case OutcomeInstalled, OutcomeAlreadyInstalled, OutcomeSkipped:
		default:
			return &JobResult{Target: j.Target, Outcome: OutcomeNotBuilt, Reason: fmt.Sprintf("not built because %s/%s %s", r.Module, r.Version, r.Outcome)}
		}
	}
	return nil
}

// build builds (if needed) and installs job i, on one of the budget's
// slots. Its dkms text is returned for the replay (with its error, as
// dkms prints it), not shown as it comes: jobs run at the same time.
func (s *scheduler) build(ctx context.Context, i int) (*JobResult, []Event) {
	e, j := s.e, s.jobs[i]
	start := time.Now()
	var failLog string
	text := &jobText{pass: SinkFunc(func(ev Event) {
		if ev.Type == BuildFailed {
			failLog = ev.Log
		}
		e.Sink.Emit(ev)
	})}
	e.Sink.Emit(Event{Type: JobStarted, Module: j.Module, Version: j.Version, Kernel: j.Kernel, Arch: j.Arch})
	s.slots <- struct{}{}
	err := s.attempt(ctx, j, j.force, s.js, s.budget, text)
	<-s.slots
	if KindOf(err) == KindOOMKilled {
		err = s.retryAlone(ctx, i, err, text)
	}
	text.failed(err)
	switch {
	case err == nil:
		return e.jobDone(j, start, OutcomeInstalled, nil, ""), text.text()
	case KindOf(err) == KindExcluded:
		return e.jobDone(j, start, OutcomeSkipped, err, ""), text.text()
	default:
		return e.jobDone(j, start, OutcomeFailed, err, failLog), text.text()
	}
}

// attempt runs one try at job j: unbuild first when forced, then
// install (which builds), with js and budget b, its text to text.
func (s *scheduler) attempt(ctx context.Context, j *job, force bool, js *Jobserver, b jobBudget, text *jobText) error {
	l := s.lockFor(j.Module + "/" + j.Version)
	l.Lock()
	defer l.Unlock()
	je := *s.e
	je.Jobserver, je.budget = js, &b
	je.DeferDepmod = true
	je.Force = false
	je.Sink = text
	if force {
		if err := Unbuild(ctx, &je, j.Target); err != nil {
			return err
		}
	}
	return Install(ctx, &je, j.Target)
}

func (s *scheduler) lockFor(mv string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks[mv] == nil {
		s.locks[mv] = &sync.Mutex{}
	}
	return s.locks[mv]
}

// retryAlone builds job i again, killed by the OOM killer, once every
// other job that can run has ended and none is running (those waiting for
// i wait), with the budget its module gets alone then: its first try
// shared the memory with the other builds.
func (s *scheduler) retryAlone(ctx context.Context, i int, killed error, text *jobText) error {
	e, j := s.e, s.jobs[i]
	text.Emit(Event{Type: Warning, Text: "Warning: " + exitReason(killed) + " It is retried alone once the other builds are over."})
	s.mu.Lock()
	s.deferred[i] = true
	s.changed.Broadcast()
	for s.retrying || !s.othersIdle() {
		s.changed.Wait()
	}
	s.deferred[i], s.retrying = false, true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.retrying = false
		s.changed.Broadcast()
		s.mu.Unlock()
	}()
	if ctx.Err() != nil {
		return killed
	}
	b := e.budgetFor(max(1, e.Jobs), []string{j.Module})
	if e.Verbose {
		text.Emit(Event{Type: Info, Text: b.String()})
	}
	js, err := NewJobserver(b.Jobs)
	if err != nil {
		js = nil
	} else {
		defer js.Close()
	}
	err = s.attempt(ctx, j, false, js, b, text)
	var le *Error
	if KindOf(err) == KindOOMKilled && errors.As(err, &le) && len(le.Lines) > 0 {
		again := *le
		again.Lines = append([]string{le.Lines[0], "It was retried alone, with no other build running, and killed again."}, le.Lines[1:]...)
		return &again
	}
	return err
}

// othersIdle reports (s.mu held) that no job is running or could start:
// each has ended, waits to be retried, or waits for a job that has not
// ended.
func (s *scheduler) othersIdle() bool {
	for i := range s.jobs {
		if s.results[i] != nil || s.deferred[i] {
			continue
		}
		waiting := false
		for _, d := range s.deps[i] {
			waiting = waiting || s.results[d] == nil
		}
		if !waiting {
			return false
		}
	}
	return true
}

func (e *Env) jobDone(j *job, start time.Time, o Outcome, err error, log string) *JobResult {
	r := &JobResult{Target: j.Target, Outcome: o, Err: err, Log: log, Duration: time.Since(start)}
	if err != nil {
		r.Reason = fmt.Sprint(exitReason(err))
		if o == OutcomeSkipped {
			r.Reason = "BUILD_EXCLUSIVE"
		}
	}
	e.Sink.Emit(Event{Type: JobFinished, Module: j.Module, Version: j.Version, Kernel: j.Kernel, Arch: j.Arch,
		Text: string(o), Err: err, Log: log, Duration: r.Duration})
	return r
}

// exitReason is the short reason shown in summaries, like dkms's module(rc).
func exitReason(err error) string {
	var le *Error
	if errors.As(err, &le) && len(le.Lines) > 0 {
		return strings.TrimSpace(le.Lines[0])
	}
	return err.Error()
}
