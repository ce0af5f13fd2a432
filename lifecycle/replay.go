package lifecycle

import (
	"errors"
	"sort"
	"strings"
	"sync"
)

// serialSink passes events on one at a time, and a replayed job's text
// as one block, so that no other job's line lands inside it.
type serialSink struct {
	mu   sync.Mutex
	sink Sink
}

func (s *serialSink) Emit(e Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink.Emit(e)
}

func (s *serialSink) emitAll(es []Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		s.sink.Emit(e)
	}
}

// replay shows the text each job of a batch printed — what dkms shows for
// each module it autoinstalls, one after the other — once the job is
// over, in the order dkms would have worked on them, so that jobs running
// at the same time do not mix their lines.
type replay struct {
	out   *serialSink
	mu    sync.Mutex
	order []int // job indexes, in dkms's order
	next  int   // position in order of the next job to show
	texts map[int][]Event
}

// newReplay orders jobs as dkms's autoinstall works on them: the modules
// that depend on nothing being installed first, in the tree's order, then
// those whose dependencies they were, and so on.
func newReplay(out *serialSink, jobs []*job) *replay {
	depth := make([]int, len(jobs))
	byName := map[jobKey]int{}
	for i, j := range jobs {
		byName[jobKey{j.Module, j.Kernel}] = i
	}
	var depthOf func(i int, seen map[int]bool) int
	depthOf = func(i int, seen map[int]bool) int {
		if seen[i] {
			return 0 // a cycle: its jobs are settled and print nothing
		}
		seen[i] = true
		d := 0
		for _, dep := range jobs[i].deps {
			if k, ok := byName[jobKey{dep, jobs[i].Kernel}]; ok {
				d = max(d, 1+depthOf(k, seen))
			}
		}
		delete(seen, i)
		return d
	}
	order := make([]int, len(jobs))
	for i := range jobs {
		order[i] = i
		depth[i] = depthOf(i, map[int]bool{})
	}
	sort.SliceStable(order, func(a, b int) bool { return depth[order[a]] < depth[order[b]] })
	return &replay{out: out, order: order, texts: map[int][]Event{}}
}

// done hands over job i's text and shows every job whose turn has come.
func (r *replay) done(i int, text []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.texts[i] = text
	for r.next < len(r.order) {
		t, ok := r.texts[r.order[r.next]]
		if !ok {
			return
		}
		r.out.emitAll(t)
		delete(r.texts, r.order[r.next])
		r.next++
	}
}

// jobText collects a job's text events for the replay, passing every
// other event on at once.
type jobText struct {
	mu     sync.Mutex
	events []Event
	pass   Sink
}

func (j *jobText) Emit(e Event) {
	if e.Type != Info && e.Type != Warning {
		j.pass.Emit(e)
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, e)
}

// failed adds a job's error as dkms prints it: "Error! " and its lines.
func (j *jobText) failed(err error) {
	if err == nil {
		return
	}
	lines := []string{err.Error()}
	var le *Error
	if errors.As(err, &le) && len(le.Lines) > 0 {
		lines = le.Unshown()
	}
	j.Emit(Event{Type: Warning, Text: "Error! " + strings.Join(lines, "\n")})
}

func (j *jobText) text() []Event {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.events
}
