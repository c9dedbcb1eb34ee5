package queue

// Statements of lease re-confirmation and lost-claim release, for the plan
// test ("{s}" stands for the schema).
const (
	SQLReleaseTokensForTest = sqlReleaseTokens
	SQLReconfirmForTest     = sqlReconfirm
)
